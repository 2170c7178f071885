"""Where the memory of the codec's activations comes from.

* Importing ``icmh`` puts PyTorch's large CPU tensors on transparent huge pages. Each fresh
  activation of a codec transform would otherwise fault in its memory 4 KiB at a time;
  ``icmh`` sets PyTorch's ``THP_MEM_ALLOC_ENABLE`` (unless the environment already does),
  which cuts those page faults about tenfold.
* The commands keep freed memory in the process (:mod:`icmh.memory`): blocks too large for
  glibc's heap would otherwise go back to the system after every frame and fault in again.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, Optional

import pytest

from icmh.memory import ENV, glibc

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


# A child that starts as every command does (run_cli), then encodes 640×480 frames with the
# shipped codec and its detection adapters, in the main thread and in a worker thread as the
# edge client does, and prints the median minor page faults of a round once the heap has
# settled. With glibc's defaults the main thread's largest activations come from mmap and go
# back on free, and the worker thread's heaps are unmapped whenever they empty.
FRAMES_CHILD = """
import resource
from concurrent.futures import ThreadPoolExecutor
import torch
from icmh.cli.common import run_cli
run_cli(lambda argv: 0)
from icmh.codec.loader import CodecOptions, open_frame_codec
from icmh.tasks import Task
frame_codec = open_frame_codec(CodecOptions())
image = torch.rand(3, 480, 640, generator=torch.Generator().manual_seed(0))
encoder = ThreadPoolExecutor(1)
def encode_round():
    frame_codec.encode([image], Task.DETECTION)
    encoder.submit(frame_codec.encode, [image], Task.DETECTION).result()
for _ in range(3):  # the heap settles within a few frames
    encode_round()
faults = []
for _ in range(5):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    encode_round()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(sorted(faults)[len(faults) // 2])
"""


def frame_page_faults(env: Dict[str, str]) -> int:
    """The median minor page faults of a round of :data:`FRAMES_CHILD` (a frame encoded in the main thread,
    one in a worker thread) once settled, with ``env`` added."""
    return int(subprocess.run([sys.executable, "-c", FRAMES_CHILD], env={**os.environ, **env}, capture_output=True,
                              text=True, check=True, timeout=300).stdout)


@pytest.mark.skipif(glibc() is None, reason="keeping freed memory is a glibc malloc setting")
def test_commands_keep_freed_memory_so_later_frames_take_no_page_faults_unless_turned_off():
    # without huge pages, so that each 4 KiB faulted in again counts
    kept = frame_page_faults({"THP_MEM_ALLOC_ENABLE": "0"})
    returned = frame_page_faults({"THP_MEM_ALLOC_ENABLE": "0", ENV: "0"})
    assert returned > 10_000, returned  # tens of MiB faulted in again every round
    assert kept * 20 < returned, (kept, returned)
