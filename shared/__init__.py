"""Code that the edge client and the cloud server both need.

SFMA adapters and adapted codecs (:mod:`shared.models`), weights loading
(:mod:`shared.weights`), adapter checkpoints (:mod:`shared.adapter_checkpoint`), the
bitstream container (:mod:`shared.bitstream`) and the frame codec that ties them
together (:mod:`shared.frame_codec`). Nothing here imports ``edge_client`` or
``cloud_server``.
"""

import warnings

__version__ = "0.1.0"

# compressai (1.2.x) calls torch.jit.script at import time, which torch >= 2.10 warns about
# on every start; the warning says nothing about this project and would clutter every CLI.
warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)
