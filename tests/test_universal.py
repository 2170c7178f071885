"""Universal coding: one bitstream for people and every machine task (decoder heads, UG-ICM).

The tiny bundled codec (quality 1); heads and shared encoders with seeded random weights
where a test is about the mechanics, the real small models where it is about training.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import zlib

import grpc
import pytest
import torch

from icmh.codec.bitstream import HEADER_SIZE, UNIVERSAL_FLAG, pack_frame, parse_frame
from icmh.codec.loader import CodecOptions, open_frame_codec
from icmh.codec.weights import load_base_codec
from icmh.errors import AdapterMismatchError, BitstreamError, UnsupportedVersionError, WeightsMissingError
from icmh.models.adapted import AdapterConfig
from icmh.seeding import seeded
from icmh.tasks import Task
from icmh.training.adapters import AdapterTrainConfig, train_adapters
from icmh.training.data import RandomCrops
from icmh.taskmodels import ModelOptions
from icmh.training.supervision import load_supervisor, supervisor_for
from icmh.v1 import icmh_pb2 as pb

from server_process import ROOT
from support import InProcessServer, frame_header, server_config, smooth_image

TINY = ["--codec", "mbt2018-mean-tiny", "--quality", "1"]
CONSUMERS = [Task.DETECTION, Task.CLASSIFICATION, Task.HUMAN]


def _tiny(**options) -> object:
    return open_frame_codec(CodecOptions(codec="mbt2018-mean-tiny", quality=1, **options))


def _with_random_heads(frame_codec, consumers=(Task.DETECTION, Task.CLASSIFICATION), shared_encoder=False):
    if shared_encoder:
        seeded(7, lambda: frame_codec.codec.add_shared_encoder(AdapterConfig(init="authors")))
    for consumer in consumers:
        frame_codec.add_random_head(consumer)
    return frame_codec


def _rewrite(frame: bytes, offset: int, value: int) -> bytes:
    """``frame`` with byte ``offset`` set to ``value`` and the CRC fixed (a well-formed lie)."""
    body = bytearray(frame[:-4])
    body[offset] = value
    return bytes(body) + struct.pack(">I", zlib.crc32(bytes(body)))


# -- the container ------------------------------------------------------------------------------
def test_single_task_frames_stay_format_1_and_universal_frames_are_format_2():
    single = pack_frame(frame_header(), [b"y", b"z"])
    universal = pack_frame(frame_header(task_id=0, universal=True), [b"y", b"z"])
    assert single[4:6] == bytes([1, 0])  # version 1, no flags: what readers of the first format read
    assert universal[4:6] == bytes([2, UNIVERSAL_FLAG])
    assert single[6:-4] == universal[6:-4] or single[8] != universal[8]  # only version, flags (and task id) differ
    assert parse_frame(universal).header.universal and not parse_frame(single).header.universal

    with pytest.raises(BitstreamError, match="universal frames have task_id 0"):
        parse_frame(_rewrite(universal, 8, 3))
    with pytest.raises(BitstreamError, match="version 1 defines 0x00"):
        parse_frame(_rewrite(single, 5, UNIVERSAL_FLAG))
    with pytest.raises(BitstreamError, match="version 2 defines 0x01"):
        parse_frame(_rewrite(universal, 5, 0x03))
    with pytest.raises(UnsupportedVersionError, match="reads versions 1 to 3"):
        parse_frame(_rewrite(universal, 4, 4))
    with pytest.raises(ValueError, match="task_id 0"):
        pack_frame(frame_header(task_id=2, universal=True), [b"y"])


# -- decoding for several consumers -------------------------------------------------------------
def test_one_frame_decodes_for_every_consumer_with_its_latent_decoded_once():
    frame_codec = _with_random_heads(_tiny())
    image = smooth_image(70, 100, seed=1, cell=8)
    universal = frame_codec.encode_universal([image])[0]
    human = frame_codec.encode([image], Task.HUMAN)[0]
    assert universal.task is None and universal.data[HEADER_SIZE:-4] == human.data[HEADER_SIZE:-4]

    calls = []
    decompress = frame_codec.codec.latent_coder.decompress
    frame_codec.codec.latent_coder.decompress = lambda *a, **k: calls.append(1) or decompress(*a, **k)
    parsed, task = frame_codec.parse(universal.data)
    decoded = frame_codec.decode_consumers(parsed, task, CONSUMERS)
    assert len(calls) == 1, "the latent is entropy-decoded once for all consumers"
    assert list(decoded) == CONSUMERS and all(d.task is c for c, d in decoded.items())
    assert all(d.image.shape == (3, 70, 100) for d in decoded.values())
    # human without a head is the base codec's reconstruction, bit for bit
    assert torch.equal(decoded[Task.HUMAN].image, frame_codec.decode([human.data])[0].image)
    assert not torch.equal(decoded[Task.DETECTION].image, decoded[Task.HUMAN].image)
    assert not torch.equal(decoded[Task.DETECTION].image, decoded[Task.CLASSIFICATION].image)
    with pytest.raises(AdapterMismatchError, match="no decoder head for consumer 'segmentation'"):
        frame_codec.decode_consumers(parsed, None, [Task.SEGMENTATION])
    single, single_task = frame_codec.parse(human.data)
    with pytest.raises(AdapterMismatchError, match="a human frame decodes for human only"):
        frame_codec.decode_consumers(single, single_task, [Task.HUMAN, Task.DETECTION])


def test_shared_encoder_and_heads_travel_as_files_and_a_foreign_encoder_is_refused(tmp_path):
    from icmh.codec.adapter_checkpoint import ROLE_HEAD, ROLE_SHARED_ENCODER, read_adapters, save_adapters

    source = _with_random_heads(_tiny(), shared_encoder=True)
    fingerprint = source.loaded.fingerprint
    folder = tmp_path / "universal"
    save_adapters(folder / "encoder.safetensors", source.codec, None, fingerprint, role=ROLE_SHARED_ENCODER)
    for consumer in (Task.DETECTION, Task.CLASSIFICATION):
        save_adapters(folder / f"head-{consumer.value}.safetensors", source.codec, consumer, fingerprint, role=ROLE_HEAD)
    meta, _ = read_adapters(folder / "head-detection.safetensors")
    assert meta.role == ROLE_HEAD and meta.encoder_id == source.codec.universal_hash().hex() != "00" * 8

    loaded = _tiny(adapters=sorted(folder.glob("*.safetensors")))
    assert loaded.consumers == [Task.HUMAN, Task.DETECTION, Task.CLASSIFICATION]
    image = smooth_image(64, 96, seed=2, cell=8)
    frame = source.encode_universal([image])[0]
    assert loaded.encode_universal([image])[0].data == frame.data  # the same shared encoder on both sides
    parsed, _ = loaded.parse(frame.data)
    again, _ = source.parse(frame.data)
    for consumer in CONSUMERS:
        assert torch.equal(loaded.decode_consumers(parsed, None, [consumer])[consumer].image,
                           source.decode_consumers(again, None, [consumer])[consumer].image)
    # heads trained on this shared encoder are refused beside another one (their frames would be nonsense)
    with pytest.raises(AdapterMismatchError, match="trained on shared encoder"):
        _tiny(adapters=[folder / "head-detection.safetensors"])
    # and a universal frame of another shared encoder is refused before decoding
    with pytest.raises(AdapterMismatchError, match="universal frame of shared encoder"):
        _tiny().parse(frame.data)


# -- the service ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server():
    instance = InProcessServer(server_config([Task.HUMAN, Task.DETECTION, Task.CLASSIFICATION], score_threshold=0.0))
    yield instance
    assert instance.stop() == 0


def _frames(task=None) -> bytes:
    """A universal frame (or one of ``task``) of the server's smoke-run codec (seeded random weights)."""
    frame_codec = open_frame_codec(CodecOptions(codec="mbt2018-mean-tiny", quality=1, random_codec=True,
                                                random_adapters=True), [task] if task else [])
    image = smooth_image(96, 128, seed=3, cell=8)
    return (frame_codec.encode([image], task) if task else frame_codec.encode_universal([image]))[0].data


def test_one_request_returns_every_consumers_result_and_the_metrics_count_each(server):
    before = {c: server.value("icmh_requests_total", task=c.value, code="OK") for c in CONSUMERS}
    decodes = server.value("icmh_stage_duration_seconds_count", task="universal", stage="decode")
    response = server.stub.Infer(pb.InferRequest(frame_id=5, bitstream=_frames(),
                                                 consumers=[c.value for c in CONSUMERS]), timeout=120)
    assert response.frame_id == 5 and (response.width, response.height) == (128, 96)
    assert [r.task for r in response.results] == [c.value for c in CONSUMERS]
    detection, classification, human = response.results
    assert detection.model == "yolox-nano" and detection.detections  # threshold 0: a random model finds things
    assert classification.model == "mobilenet-v2" and len(classification.classes) == 5
    assert human.image_png.startswith(b"\x89PNG") and (human.width, human.height) == (128, 96)
    assert not response.detections and not response.classes and not response.image_png and not response.task
    for consumer in CONSUMERS:
        assert server.value("icmh_requests_total", task=consumer.value, code="OK") == before[consumer] + 1
    assert server.value("icmh_stage_duration_seconds_count", task="universal", stage="decode") == decodes + 1

    everyone = server.stub.Infer(pb.InferRequest(frame_id=6, bitstream=_frames()), timeout=120)
    assert [r.task for r in everyone.results] == ["human", "detection", "classification"]  # all served consumers


@pytest.mark.parametrize("consumers, frame_task, code, message", [
    (["detection", "poetry"], None, grpc.StatusCode.INVALID_ARGUMENT, "unknown task 'poetry'"),
    (["segmentation"], None, grpc.StatusCode.FAILED_PRECONDITION, "no decoder head and model for consumer segmentation"),
    (["human", "human"], None, grpc.StatusCode.INVALID_ARGUMENT, "named twice"),
    (["classification"], Task.DETECTION, grpc.StatusCode.FAILED_PRECONDITION, "decodes for detection only"),
])
def test_consumers_a_server_cannot_serve_are_refused_per_frame(server, consumers, frame_task, code, message):
    with pytest.raises(grpc.RpcError) as caught:
        server.stub.Infer(pb.InferRequest(frame_id=1, bitstream=_frames(frame_task), consumers=consumers), timeout=60)
    assert caught.value.code() == code and message in caught.value.details()


def test_capabilities_say_which_consumers_universal_frames_decode_for(server):
    caps = server.stub.GetCapabilities(pb.GetCapabilitiesRequest(), timeout=30)
    assert caps.format_version == 3  # the newest the server reads (universal frames are version 2)
    assert list(caps.codecs[0].consumers) == ["human", "detection", "classification"]
    assert caps.codecs[0].universal_encoder_hash == bytes(8)  # smoke runs: the base encoder


OLD_CLIENT = """
import sys
import grpc
import icmh_pb2, icmh_pb2_grpc
stub = icmh_pb2_grpc.InferenceServiceStub(grpc.insecure_channel(sys.argv[1]))
caps = stub.GetCapabilities(icmh_pb2.GetCapabilitiesRequest(), timeout=60)
response = stub.Infer(icmh_pb2.InferRequest(frame_id=9, bitstream=open(sys.argv[2], "rb").read()), timeout=120)
print(caps.format_version, sorted(caps.tasks), response.frame_id, response.task, response.model,
      len(response.detections), response.bits_per_pixel > 0)
"""


def test_clients_of_the_first_contract_still_work(server, tmp_path):
    """Stubs generated from the contract as it was before universal frames (tests/data/contract-1)
    talk to today's server: capabilities parse and single-task frames are answered as before."""
    from grpc_tools import protoc

    contract = ROOT / "tests" / "data" / "contract-1"
    assert protoc.main(["protoc", f"-I{contract}", f"--python_out={tmp_path}", f"--grpc_python_out={tmp_path}",
                        str(contract / "icmh.proto")]) == 0
    (tmp_path / "client.py").write_text(OLD_CLIENT)
    frame = tmp_path / "frame.icmh"
    frame.write_bytes(_frames(Task.DETECTION))
    run = subprocess.run([sys.executable, str(tmp_path / "client.py"), f"127.0.0.1:{server.port}", str(frame)],
                         cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(tmp_path)), capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr
    version, *rest = run.stdout.split(maxsplit=1)
    assert version == "3" and rest[0].split("] ", 1)[1].split()[:3] == ["9", "detection", "yolox-nano"]
    assert run.stdout.strip().endswith("True")


def test_the_edge_client_streams_universal_frames_and_prints_every_consumer(server, tmp_path):
    out = tmp_path / "results.jsonl"
    run = subprocess.run([sys.executable, "-m", "icmh.edge.cli", "--demo", "--frames", "2", "--demo-size", "128x96",
                          "--tasks", "detection,classification,human", *TINY, "--random-weights",
                          "--server", f"127.0.0.1:{server.port}", "--output", str(out)],
                         cwd=ROOT, capture_output=True, text=True, timeout=300, env=dict(os.environ, ICMH_OFFLINE="1"))
    assert run.returncode == 0, run.stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["frame_id"] for r in records] == [0, 1]
    assert all([e["task"] for e in r["results"]] == ["detection", "classification", "human"] for r in records)
    assert "| detection [yolox-nano]" in run.stdout and "| human [png] image 128×96" in run.stdout
    assert "universal: detection, classification, human" in run.stderr

    refused = subprocess.run([sys.executable, "-m", "icmh.edge.cli", "--demo", "--frames", "1", "--tasks",
                              "detection,segmentation", *TINY, "--random-weights", "--server",
                              f"127.0.0.1:{server.port}"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2
    assert "has no decoder head for segmentation" in refused.stderr and "Traceback" not in refused.stderr


# -- training --------------------------------------------------------------------------------------
def test_joint_training_lowers_every_heads_loss_and_leaves_the_base_codec_bit_identical(few_training_images,
                                                                                               tmp_path):
    config = AdapterTrainConfig(task="", heads=["human", "classification", "machine"], out=tmp_path / "universal",
                                data=[few_training_images], codec="mbt2018-mean-tiny", quality=1, steps=40, crop=64,
                                batch_size=4, lr=2e-3, seed=0)
    history = train_adapters(config, progress=False)
    crops = RandomCrops(sorted(few_training_images.iterdir()), crop=64, seed=0, length=64).batch(1, 8)
    supervisors = {c: supervisor_for(c, "standin", config.models.get(c.value), ModelOptions()) for c in config.consumers}

    def losses(codec) -> dict:
        """Each head's own loss ``bpp + λ_t·D_t`` (the rate is shared by every head)."""
        torch.manual_seed(1)  # the same quantisation noise before and after
        with torch.no_grad():
            out = codec.universal_forward(crops, config.consumers)
            bpp = sum(-torch.log2(l).sum() for l in out["likelihoods"].values()).item() / (8 * 64 * 64)
            return {c.value: bpp + config.lmbdas[c.value] * supervisors[c].distortion(crops, out["x_hats"][c]).item()
                    for c in config.consumers}

    fresh = _tiny().codec  # zero-initialised shared encoder and heads: the base codec, before training
    fresh.add_shared_encoder()
    for consumer in config.consumers:
        fresh.add_head(consumer)
    before, after = losses(fresh), losses(history.codec)
    assert all(after[name] < before[name] for name in before), (before, after)

    codec = history.codec
    reference = load_base_codec("mbt2018-mean-tiny", 1).model.state_dict()
    assert all(torch.equal(value, reference[key]) for key, value in codec.base.state_dict().items())
    files = sorted(p.name for p in config.out.iterdir())
    assert files == ["mbt2018-mean-tiny-q1-universal-encoder.safetensors",
                     "mbt2018-mean-tiny-q1-universal-head-classification.safetensors",
                     "mbt2018-mean-tiny-q1-universal-head-human.safetensors",
                     "mbt2018-mean-tiny-q1-universal-head-machine.safetensors"]
    served = _tiny(adapters=sorted(config.out.iterdir()))
    assert served.consumers == [Task.HUMAN, Task.CLASSIFICATION, Task.MACHINE]


# -- task-agnostic supervision ---------------------------------------------------------------------
@pytest.mark.parametrize("name", ["clip-random", "standin"])
def test_the_machine_distortion_is_zero_for_the_original_and_differentiable(name):
    supervisor = load_supervisor(name, options=ModelOptions(random_weights=True))
    x = smooth_image(64, 64, seed=4, cell=8)[None].repeat(2, 1, 1, 1)
    torch.manual_seed(0)
    assert supervisor.distortion(x, x.clone()).item() == pytest.approx(0, abs=1e-5)
    noisy = (x + 0.2 * torch.randn_like(x)).clamp(0, 1).requires_grad_(True)
    torch.manual_seed(0)
    loss = supervisor.distortion(x, noisy)
    loss.backward()
    assert loss.item() > 1e-3 and noisy.grad is not None and noisy.grad.abs().sum() > 0
    assert "RANDOM" in supervisor.weights_label


def test_missing_clip_weights_name_the_repository_and_the_way_out(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(WeightsMissingError, match=r"openai/clip-vit-base-patch32.*--supervisor standin"):
        load_supervisor("clip-vit-b-32", download=False)
