"""Generated package ``shared.proto.icmh`` (scripts/gen_proto.py); do not edit."""
