"""The cloud side: decoding with the task's decoder adapters (and, next, task models
and the gRPC service). Depends on :mod:`shared` only."""
