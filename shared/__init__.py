"""Code that the edge client and the cloud server both need.

SFMA adapters and adapted codecs (:mod:`icmh.models`), weights loading
(:mod:`icmh.codec.weights`), adapter checkpoints (:mod:`icmh.codec.adapter_checkpoint`), the
bitstream container (:mod:`icmh.codec.bitstream`) and the frame codec that ties them
together (:mod:`icmh.codec.frame_codec`). Nothing here imports ``edge_client`` or
``cloud_server``.
"""

import os
import warnings

__version__ = "0.1.0"

# Large CPU tensors on transparent huge pages (PyTorch's THP_MEM_ALLOC_ENABLE, read on the first
# large allocation): every fresh activation of a codec transform otherwise costs one page fault
# per 4 KiB (tens of thousands per adapter at H/2), a third of the adapters' time on a CPU. It
# changes where memory comes from, never what is computed. THP_MEM_ALLOC_ENABLE=0 turns it off.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

# compressai (1.2.x) calls torch.jit.script at import time, which torch >= 2.10 warns about
# on every start; the warning says nothing about this project and would clutter every CLI.
warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)
