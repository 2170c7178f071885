"""Python stubs generated from proto/ by scripts/gen_proto.py; do not edit.

Import them as ``from shared.proto.icmh.v1 import icmh_pb2, icmh_pb2_grpc``.
"""
