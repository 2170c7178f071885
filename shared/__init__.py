"""Code that the edge client and the cloud server both need.

SFMA adapters and adapted codecs (:mod:`icmh.models`), weights loading
(:mod:`icmh.codec.weights`), adapter checkpoints (:mod:`icmh.codec.adapter_checkpoint`), the
bitstream container (:mod:`icmh.codec.bitstream`) and the frame codec that ties them
together (:mod:`icmh.codec.frame_codec`). Nothing here imports ``edge_client`` or
``cloud_server``.
"""

import warnings

__version__ = "0.1.0"

# compressai (1.2.x) calls torch.jit.script at import time, which torch >= 2.10 warns about
# on every start; the warning says nothing about this project and would clutter every CLI.
warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)
