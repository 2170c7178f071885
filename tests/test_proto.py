"""The wire contract compiles with the pinned protoc (grpcio-tools)."""

from pathlib import Path

from grpc_tools import protoc
import grpc_tools

ROOT = Path(__file__).resolve().parent.parent


def test_contract_compiles_to_python(tmp_path):
    include = Path(grpc_tools.__file__).parent / "_proto"
    status = protoc.main(["protoc", f"-I{ROOT / 'proto'}", f"-I{include}", f"--python_out={tmp_path}",
                          f"--grpc_python_out={tmp_path}", str(ROOT / "proto/icmh/v1/icmh.proto")])
    assert status == 0
    generated = (tmp_path / "icmh/v1/icmh_pb2_grpc.py").read_text()
    for rpc in ("Infer", "StreamInfer", "GetCapabilities"):
        assert f"def {rpc}(" in generated
