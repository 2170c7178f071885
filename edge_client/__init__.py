"""The edge side: capture sources, encoding with the task's encoder adapters, CLI.

Depends on :mod:`shared` only.
"""

import os

# Set before gRPC loads: its C core logs one INFO line per failed TLS handshake to stderr,
# which would bury the client's own one-line error (that already says why).
# GRPC_VERBOSITY=INFO (or DEBUG) in the environment brings them back.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
