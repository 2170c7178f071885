"""Importing ``icmh`` puts PyTorch's large CPU tensors on transparent huge pages.

Each fresh activation of a codec transform would otherwise fault in its memory 4 KiB at a
time; ``icmh`` sets PyTorch's ``THP_MEM_ALLOC_ENABLE`` (unless the environment already does),
which cuts those page faults about tenfold.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Optional

import pytest

THP_SETTING = Path("/sys/kernel/mm/transparent_hugepage/enabled")

# A child that imports icmh first, then counts the minor page faults of a few fresh 25 MB tensors.
CHILD = """
import resource
import icmh
import torch
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(4):
    y = torch.ones(64, 256, 384) * 2
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def page_faults(thp: Optional[str]) -> int:
    """Minor page faults of :data:`CHILD`, with ``THP_MEM_ALLOC_ENABLE`` unset (None) or set to ``thp``."""
    env = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
    if thp is not None:
        env["THP_MEM_ALLOC_ENABLE"] = thp
    return int(subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True,
                              check=True, timeout=120).stdout)


@pytest.mark.skipif(not THP_SETTING.is_file() or "[madvise]" not in THP_SETTING.read_text(),
                    reason="transparent huge pages are not on 'madvise' here: with 'always' every process "
                           "gets them, with 'never' none does, whatever the setting")
def test_importing_icmh_cuts_the_page_faults_of_large_tensors_unless_turned_off():
    default, off = page_faults(None), page_faults("0")
    assert default * 4 < off, (default, off)
