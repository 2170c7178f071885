"""The wire contract (``proto/icmh/v1/icmh.proto``) and its generated stubs (``shared/v1``, the package ``icmh.v1``).

The stubs are committed; these tests regenerate them with the pinned grpcio-tools and
compare byte for byte, so a ``.proto`` edit without ``python scripts/gen_proto.py`` fails.
"""

from __future__ import annotations

import importlib.util
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GEN_SCRIPT = ROOT / "scripts" / "gen_proto.py"
STUBS = ("shared/v1/icmh_pb2.py", "shared/v1/icmh_pb2.pyi",
         "shared/v1/icmh_pb2_grpc.py")


@pytest.fixture(scope="module")
def gen_proto():
    """``scripts/gen_proto.py`` loaded as a module (``scripts`` is not a package)."""
    spec = importlib.util.spec_from_file_location("gen_proto", GEN_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_generator(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(GEN_SCRIPT), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)


# --- the committed stubs are what the generator makes --------------------------------------------

def test_committed_stubs_match_a_fresh_generation_check_command():
    result = run_generator("--check")
    assert result.returncode == 0, result.stderr
    assert "up to date" in result.stdout


def test_committed_stubs_match_a_fresh_generation_in_process(gen_proto):
    assert gen_proto.check(ROOT) == []
    rendered = gen_proto.render(ROOT)
    for rel in STUBS:
        assert rendered[rel] == (ROOT / rel).read_bytes(), rel


def test_generation_is_deterministic(gen_proto):
    assert gen_proto.render(ROOT) == gen_proto.render(ROOT)


def test_check_names_stale_missing_and_stray_files(gen_proto, tmp_path):
    shutil.copytree(ROOT / "proto", tmp_path / "proto")
    shutil.copytree(ROOT / "shared/v1", tmp_path / "shared/v1",
                    ignore=shutil.ignore_patterns("__pycache__"))
    grpc_module = tmp_path / "shared/v1/icmh_pb2_grpc.py"
    grpc_module.write_bytes(grpc_module.read_bytes() + b"\n")
    (tmp_path / "shared/v1/icmh_pb2.pyi").unlink()
    (tmp_path / "shared/v1/old_pb2.py").write_text("")

    assert gen_proto.check(tmp_path) == [
        "shared/v1/icmh_pb2.pyi (missing)",
        "shared/v1/icmh_pb2_grpc.py (differs)",
        "shared/v1/old_pb2.py (not generated from the current .proto)",
    ]
    result = run_generator("--check", "--root", str(tmp_path))
    assert result.returncode == 1
    assert "icmh_pb2_grpc.py (differs)" in result.stderr and "icmh_pb2.pyi (missing)" in result.stderr


def test_an_edited_proto_makes_the_check_fail(gen_proto, tmp_path):
    shutil.copytree(ROOT / "proto", tmp_path / "proto")
    shutil.copytree(ROOT / "shared/v1", tmp_path / "shared/v1",
                    ignore=shutil.ignore_patterns("__pycache__"))
    proto = tmp_path / "proto/icmh/v1/icmh.proto"
    proto.write_text(proto.read_text().replace("message GetCapabilitiesRequest {}",
                                               "message GetCapabilitiesRequest { bool verbose = 1; }"))
    assert set(gen_proto.check(tmp_path)) == {f"{rel} (differs)" for rel in STUBS}
    gen_proto.write(tmp_path)
    assert gen_proto.check(tmp_path) == []


# --- the generated modules -----------------------------------------------------------------------

def test_stubs_are_the_icmh_v1_package_exactly_as_protoc_writes_them():
    from icmh.v1 import icmh_pb2, icmh_pb2_grpc

    assert icmh_pb2_grpc.icmh_dot_v1_dot_icmh__pb2 is icmh_pb2
    assert b"from icmh.v1 import icmh_pb2" in (ROOT / "shared/v1/icmh_pb2_grpc.py").read_bytes()
    assert icmh_pb2.InferRequest.__module__ == "icmh.v1.icmh_pb2"
    # the descriptor keeps the canonical file name that reflection and other languages see
    assert icmh_pb2.DESCRIPTOR.name == "icmh/v1/icmh.proto"
    assert icmh_pb2.DESCRIPTOR.package == "icmh.v1"


def test_messages_pickle_by_their_real_module():
    from icmh.v1 import icmh_pb2

    request = icmh_pb2.InferRequest(frame_id=7, bitstream=b"ICMH\x01")
    assert pickle.loads(pickle.dumps(request)) == request


def test_infer_request_and_response_round_trip_through_bytes():
    from icmh.v1 import icmh_pb2

    request = icmh_pb2.InferRequest(frame_id=2**40 + 3, bitstream=bytes(range(256)))
    assert icmh_pb2.InferRequest.FromString(request.SerializeToString()) == request

    response = icmh_pb2.InferResponse(
        frame_id=2**40 + 3, task="segmentation", width=640, height=480, bits_per_pixel=0.125,
        detections=[icmh_pb2.Detection(box=icmh_pb2.BoundingBox(x0=1.5, y0=2.0, x1=100.25, y1=200.0),
                                       label=18, label_name="dog", score=0.875, mask_rle=b"a1b2c3")],
        classes=[icmh_pb2.ClassScore(index=207, name="golden retriever", score=0.5)],
        times=icmh_pb2.StageTimes(decode_seconds=0.01, infer_seconds=0.02, total_seconds=0.035))
    decoded = icmh_pb2.InferResponse.FromString(response.SerializeToString())
    assert decoded == response
    assert decoded.detections[0].box.x1 == 100.25 and decoded.detections[0].mask_rle == b"a1b2c3"
    assert decoded.classes[0].name == "golden retriever"
    assert not decoded.HasField("error")


def test_a_frame_error_round_trips_and_is_distinguishable_from_a_result():
    import grpc

    from icmh.v1 import icmh_pb2

    code = grpc.StatusCode.INVALID_ARGUMENT.value[0]
    response = icmh_pb2.InferResponse(frame_id=9, error=icmh_pb2.FrameError(
        code=code, message="frame 9: bad magic b'\\x00\\x01\\x02\\x03' (not an ICMH bitstream)"))
    decoded = icmh_pb2.InferResponse.FromString(response.SerializeToString())
    assert decoded.frame_id == 9
    assert decoded.HasField("error")
    assert decoded.error.code == code and "bad magic" in decoded.error.message
    assert len(decoded.detections) == 0


def test_capabilities_round_trip_with_limits_and_adapter_hashes():
    from icmh.v1 import icmh_pb2

    caps = icmh_pb2.Capabilities(
        codecs=[icmh_pb2.CodecCapability(codec="mbt2018-mean", codec_id=1, quality=3,
                                         base_fingerprint=b"\x01" * 8,
                                         adapter_hashes={"detection": b"\x02" * 8})],
        tasks=["human", "detection"], max_frame_bytes=1 << 20, max_width=4096, max_height=4096,
        max_pixels=3840 * 2160, format_version=1, max_message_bytes=4 << 20)
    decoded = icmh_pb2.Capabilities.FromString(caps.SerializeToString())
    assert decoded == caps
    assert decoded.max_message_bytes == 4 << 20
    assert dict(decoded.codecs[0].adapter_hashes) == {"detection": b"\x02" * 8}


def test_field_numbers_are_stable():
    """Renumbering a field breaks every deployed client: this list only ever grows."""
    from icmh.v1 import icmh_pb2

    expected = {
        "InferRequest": {"frame_id": 1, "bitstream": 2},
        "BoundingBox": {"x0": 1, "y0": 2, "x1": 3, "y1": 4},
        "Detection": {"box": 1, "label": 2, "label_name": 3, "score": 4, "mask_rle": 5},
        "ClassScore": {"index": 1, "name": 2, "score": 3},
        "StageTimes": {"decode_seconds": 1, "infer_seconds": 2, "total_seconds": 3},
        "FrameError": {"code": 1, "message": 2},
        "InferResponse": {"frame_id": 1, "task": 2, "width": 3, "height": 4, "bits_per_pixel": 5,
                          "detections": 6, "classes": 7, "image_png": 8, "times": 9, "error": 10},
        "CodecCapability": {"codec": 1, "codec_id": 2, "quality": 3, "base_fingerprint": 4,
                            "adapter_hashes": 5},
        "Capabilities": {"codecs": 1, "tasks": 2, "max_frame_bytes": 3, "max_width": 4, "max_height": 5,
                         "max_pixels": 6, "format_version": 7, "max_message_bytes": 8},
    }
    for message, fields in expected.items():
        descriptor = icmh_pb2.DESCRIPTOR.message_types_by_name[message]
        actual = {f.name: f.number for f in descriptor.fields}
        assert {name: actual.get(name) for name in fields} == fields, message


# --- the service ---------------------------------------------------------------------------------

def test_service_has_exactly_three_methods_with_the_right_streaming():
    from icmh.v1 import icmh_pb2

    service = icmh_pb2.DESCRIPTOR.services_by_name["InferenceService"]
    assert service.full_name == "icmh.v1.InferenceService"
    methods = {m.name: (m.client_streaming, m.server_streaming, m.input_type.name, m.output_type.name)
               for m in service.methods}
    assert methods == {
        "Infer": (False, False, "InferRequest", "InferResponse"),
        "StreamInfer": (True, True, "InferRequest", "InferResponse"),
        "GetCapabilities": (False, False, "GetCapabilitiesRequest", "Capabilities"),
    }


def test_generated_stub_and_servicer_match_the_descriptor():
    from icmh.v1 import icmh_pb2_grpc

    class RecordingChannel:
        def __init__(self):
            self.calls = {}

        def _factory(kind):
            def make(self, path, request_serializer=None, response_deserializer=None, **_):
                self.calls[path] = kind
                return object()
            return make

        unary_unary = _factory("unary_unary")
        unary_stream = _factory("unary_stream")
        stream_unary = _factory("stream_unary")
        stream_stream = _factory("stream_stream")

    channel = RecordingChannel()
    icmh_pb2_grpc.InferenceServiceStub(channel)
    assert channel.calls == {
        "/icmh.v1.InferenceService/Infer": "unary_unary",
        "/icmh.v1.InferenceService/StreamInfer": "stream_stream",
        "/icmh.v1.InferenceService/GetCapabilities": "unary_unary",
    }
    servicer = icmh_pb2_grpc.InferenceServiceServicer
    assert {name for name in vars(servicer) if not name.startswith("_")} == {
        "Infer", "StreamInfer", "GetCapabilities"}
