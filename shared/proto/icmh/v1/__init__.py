"""Generated package ``shared.proto.icmh.v1`` (scripts/gen_proto.py); do not edit."""
