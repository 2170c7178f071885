"""The gRPC service on loopback: real servers in this process (:class:`support.InProcessServer`),
and a ``cloud-server`` process where SIGTERM is under test."""

from __future__ import annotations

import signal
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pycocotools import mask as mask_utils

from icmh.service.result_proto import result_from_proto
from icmh.codec.loader import CodecOptions, open_frame_codec
from icmh.images import load_image
from icmh.evaluation.datasets import open_eval_set
from icmh.taskmodels import TASK_MODELS, default_model_name
from icmh.tasks import Task
from icmh.v1 import icmh_pb2 as pb

from server_process import ServerProcess
from support import InProcessServer, call_outcomes, identity_adapter_files, server_config, wait_until


SERVED = (Task.HUMAN, Task.DETECTION, Task.SEGMENTATION, Task.CLASSIFICATION)


@pytest.fixture(scope="module")
def server():
    """The tasks of :data:`SERVED`, random weights; score threshold 0: the random task models' detections
    are all kept."""
    instance = InProcessServer(server_config(SERVED, score_threshold=0))
    yield instance
    instance.stop()


@pytest.fixture(scope="module")
def frame_codec():
    return open_frame_codec(CodecOptions(codec="mbt2018-mean-tiny", quality=1, random_codec=True,
                                         random_adapters=True), list(SERVED))


@pytest.fixture(scope="module")
def images(data_dir):
    """240×320 crops of three COCO photos."""
    files = sorted((data_dir / "coco-mini" / "val2017").glob("*.jpg"))[:3]
    if len(files) < 3:
        pytest.skip(f"COCO-mini images not found in {data_dir / 'coco-mini' / 'val2017'} (set ICMH_DATA_DIR)")
    return [load_image(path)[:, :240, :320] for path in files]


@pytest.mark.parametrize("task", SERVED, ids=lambda t: t.value)
def test_stream_returns_one_well_formed_result_per_frame_in_order(server, frame_codec, images, task):
    server_models = {Task(m.task): m.name for m in server.stub.GetCapabilities(pb.GetCapabilitiesRequest()).task_models}
    frames = frame_codec.encode(images, task)
    requests = [pb.InferRequest(frame_id=100 + i, bitstream=f.data) for i, f in enumerate(frames)]
    responses = list(server.stub.StreamInfer(iter(requests), timeout=300))
    assert [r.frame_id for r in responses] == [100, 101, 102]
    for response, frame, image in zip(responses, frames, images):
        assert not response.HasField("error"), response.error.message
        assert response.task == task.value and response.model == server_models[task]
        assert (response.height, response.width) == tuple(image.shape[-2:])
        assert response.bits_per_pixel == pytest.approx(frame.bpp)
        result = result_from_proto(response)
        if task is Task.HUMAN:
            assert load_png_size(response.image_png) == (image.shape[-1], image.shape[-2])
        if task is Task.CLASSIFICATION:
            assert len(result.classes) == 5 and all(0 <= c.index < 1000 for c in result.classes)
        if task in (Task.DETECTION, Task.SEGMENTATION):  # at score threshold 0 every candidate is kept
            assert result.detections, f"{task.value}: no detection at score threshold 0"
        for det in result.detections:
            assert 0 <= det.box.x0 <= det.box.x1 <= image.shape[-1] and 0 <= det.score <= 1
            if task is Task.SEGMENTATION:
                assert mask_utils.decode(det.mask_rle).shape == tuple(image.shape[-2:])
        if task is Task.SEGMENTATION:
            assert any(d.mask_rle for d in result.detections)


def load_png_size(data: bytes):
    import io

    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        return image.size


def test_bad_inputs_get_the_right_status_and_the_server_keeps_serving(server, frame_codec, images):
    good = frame_codec.encode(images[:1], Task.HUMAN)[0].data
    detection = frame_codec.encode(images[:1], Task.DETECTION)[0].data
    other = open_frame_codec(CodecOptions(codec="mbt2018-mean-tiny", quality=1, random_codec=True,
                                          random_adapters=True, seed=5),
                             [Task.DETECTION]).encode(images[:1], Task.DETECTION)[0].data
    cases = [  # the one malformed frame through the server (every kind of malformed frame: test_malformed_frames.py)
        (good[:-10], grpc.StatusCode.INVALID_ARGUMENT, "truncated"),
        (other, grpc.StatusCode.FAILED_PRECONDITION, "other mbt2018-mean-tiny weights"),
        (_with_adapter_hash(detection, b"\x07" * 8), grpc.StatusCode.FAILED_PRECONDITION, "adapters"),
    ]
    for data, code, fragment in cases:
        with pytest.raises(grpc.RpcError) as info:
            server.stub.Infer(pb.InferRequest(frame_id=1, bitstream=data), timeout=60)
        assert info.value.code() == code and fragment in info.value.details()
    with pytest.raises(grpc.RpcError) as info:
        server.stub.Infer(pb.InferRequest(frame_id=1, bitstream=b"x" * (17 * 1024 * 1024)), timeout=60)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert list(server.stub.StreamInfer(iter([]), timeout=30)) == []  # a stream that sends nothing
    assert server.stub.Infer(pb.InferRequest(frame_id=2, bitstream=good), timeout=60).frame_id == 2


def _with_adapter_hash(data: bytes, value: bytes) -> bytes:
    import dataclasses

    from icmh.codec.bitstream import pack_frame, parse_frame
    frame = parse_frame(data)
    return pack_frame(dataclasses.replace(frame.header, adapter_hash=value), frame.strings)


def test_health_reflection_and_capabilities(server, frame_codec):
    health = health_pb2_grpc.HealthStub(server.channel)
    assert health.Check(health_pb2.HealthCheckRequest(service="icmh.v1.InferenceService")).status == \
        health_pb2.HealthCheckResponse.SERVING
    caps = server.stub.GetCapabilities(pb.GetCapabilitiesRequest())
    assert set(caps.tasks) == {t.value for t in SERVED}
    assert caps.codecs[0].codec == "mbt2018-mean-tiny"
    assert caps.codecs[0].adapter_hashes["detection"] == frame_codec.codec.adapter_hash(Task.DETECTION)
    models = {m.task: m for m in caps.task_models}
    assert set(models) == {t.value for t in SERVED}
    assert models["human"].name == "png"
    for task in (Task.DETECTION, Task.SEGMENTATION, Task.CLASSIFICATION):
        assert models[task.value].name == default_model_name(task)
        assert models[task.value].weights.startswith("RANDOM WEIGHTS") and not models[task.value].pretrained


@pytest.fixture(scope="module")
def identity_adapters(tmp_path_factory):
    """Identity adapter files of the trained tiny codec, quality 4, for the three machine tasks."""
    return identity_adapter_files(tmp_path_factory.mktemp("adapters"), "mbt2018-mean-tiny", 4,
                                  [Task.DETECTION, Task.SEGMENTATION, Task.CLASSIFICATION])


@pytest.fixture(scope="module")
def real_server(identity_adapters):
    """A server with the real task models of ../shared/models and a trained codec (identity adapters)."""
    names = [default_model_name(task) for task in (Task.DETECTION, Task.SEGMENTATION, Task.CLASSIFICATION)]
    if not all(TASK_MODELS[name].files_present() for name in names) or names[0] != "yolox-nano":
        pytest.skip("the real task models are not here (set ICMH_MODELS_DIR to ../shared/models)")
    codec = CodecOptions(codec="mbt2018-mean-tiny", quality=4, adapters=identity_adapters)
    instance = InProcessServer(server_config(codec=codec))
    yield instance
    instance.stop()


def test_real_models_find_the_objects_of_a_coco_image_and_name_themselves(real_server, identity_adapters,
                                                                             data_dir):
    eval_set = open_eval_set(Task.DETECTION, data_dir / "coco-mini")
    item = next(i for i in eval_set.images if len(eval_set.coco.getAnnIds(imgIds=[i.image_id])) >= 3)
    truth = {eval_set.coco.cats[a["category_id"]]["name"]
             for a in eval_set.coco.loadAnns(eval_set.coco.getAnnIds(imgIds=[item.image_id]))}
    image = load_image(item.path)
    codec = open_frame_codec(CodecOptions(codec="mbt2018-mean-tiny", quality=4, adapters=identity_adapters))
    caps = {m.task: m for m in real_server.stub.GetCapabilities(pb.GetCapabilitiesRequest()).task_models}
    for task in (Task.DETECTION, Task.SEGMENTATION, Task.CLASSIFICATION):
        assert caps[task.value].pretrained and caps[task.value].name == default_model_name(task)
        frame = codec.encode([image], task)[0]
        response = real_server.stub.Infer(pb.InferRequest(frame_id=1, bitstream=frame.data), timeout=300)
        result = result_from_proto(response)
        assert result.model == default_model_name(task) and (result.height, result.width) == tuple(image.shape[-2:])
        if task is Task.CLASSIFICATION:
            assert len(result.classes) == 5 and result.classes[0].score > 0
            continue
        found = {d.label_name for d in result.detections}
        assert found & truth, f"{task.value}: found {found}, the image holds {truth}"
        for detection in result.detections:
            assert 0.5 <= detection.score <= 1
            if task is Task.SEGMENTATION:
                mask = mask_utils.decode(detection.mask_rle)
                assert mask.shape == tuple(image.shape[-2:]) and mask.any()


def test_metrics_count_exactly_the_frames_sent_with_their_real_bpp(frame_codec, images):
    process = InProcessServer(server_config([Task.HUMAN]))
    try:
        frames = frame_codec.encode(images, Task.HUMAN)
        requests = [pb.InferRequest(frame_id=i, bitstream=f.data) for i, f in enumerate(frames)]
        assert len(list(process.stub.StreamInfer(iter(requests), timeout=120))) == len(frames)
        samples = process.scrape()
        labels = (("codec", "mbt2018-mean-tiny"), ("quality", "1"), ("task", "human"))
        assert samples[("icmh_bits_per_pixel_count", labels)] == len(frames)
        assert samples[("icmh_bits_per_pixel_sum", labels)] == pytest.approx(sum(f.bpp for f in frames))
        assert samples[("icmh_bitstream_bytes_sum", (("task", "human"),))] == sum(len(f.data) for f in frames)
        assert samples[("icmh_requests_total", (("code", "OK"), ("task", "human")))] == len(frames)
    finally:
        assert process.stop() == 0


def test_sigterm_during_a_stream_ends_it_at_once_with_unavailable_and_exits_0(frame_codec, images):
    """Draining tells open streams at once: what ran is answered, the rest is for another server."""
    process = ServerProcess("--tasks", "human", "--grace", "120")
    frames = frame_codec.encode(images * 4, Task.HUMAN)
    requests = [pb.InferRequest(frame_id=i, bitstream=f.data) for i, f in enumerate(frames)]
    answered = []
    call = process.stub.StreamInfer(iter(requests), timeout=120)
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as info:
        for response in call:
            answered.append(response.frame_id)
            if len(answered) == 1:
                process.proc.send_signal(signal.SIGTERM)
                signalled = time.monotonic()
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE and "draining" in info.value.details()
    assert process.proc.wait(timeout=150) == 0
    assert time.monotonic() - signalled < 60, "the stream was not told at once: it waited for the grace period"
    assert answered == list(range(len(answered))) and len(answered) < len(frames)
    assert any("draining" in line for line in process.lines)
    assert started < signalled


def test_overload_answers_resource_exhausted_and_keeps_serving(frame_codec, images):
    process = InProcessServer(server_config([Task.HUMAN], max_pending=1))
    try:
        data = frame_codec.encode(images[:1], Task.HUMAN)[0].data
        futures = [process.stub.Infer.future(pb.InferRequest(frame_id=i, bitstream=data), timeout=120)
                   for i in range(6)]
        outcomes = call_outcomes(futures)
        codes = [code for code, _ in outcomes]
        assert all("server busy" in detail for code, detail in outcomes if code != grpc.StatusCode.OK)
        assert grpc.StatusCode.OK in codes and grpc.StatusCode.RESOURCE_EXHAUSTED in codes
        assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}
        assert process.stub.Infer(pb.InferRequest(frame_id=9, bitstream=data), timeout=60).frame_id == 9
    finally:
        assert process.stop() == 0


def test_deadlines_are_honoured_and_queued_frames_past_theirs_are_skipped(frame_codec, images):
    process = InProcessServer(server_config([Task.DETECTION]))
    try:
        data = frame_codec.encode(images[:1], Task.DETECTION)[0].data
        slow = process.stub.Infer.future(pb.InferRequest(frame_id=1, bitstream=data), timeout=120)
        wait_until(lambda: process.value("icmh_pending_requests") >= 1, 60,
                   "frame 1 is running (before frame 2 is sent)", interval=0.01)
        with pytest.raises(grpc.RpcError) as info:  # queued behind the slow frame, gives up after 50 ms
            process.stub.Infer(pb.InferRequest(frame_id=2, bitstream=data), timeout=0.05)
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert slow.result().frame_id == 1
        assert process.stub.Infer(pb.InferRequest(frame_id=3, bitstream=data), timeout=120).frame_id == 3
        samples = process.scrape()
        # frame 2 never ran: only frames 1 and 3 were processed
        assert samples[("icmh_requests_total", (("code", "OK"), ("task", "detection")))] == 2
        assert samples[("icmh_stage_duration_seconds_count", (("stage", "total"), ("task", "detection")))] == 2
    finally:
        assert process.stop() == 0
