"""The serving path under faults and abuse: per-frame isolation, bounded cost, limits, batching.

Servers run in this process on a free loopback port (:class:`support.InProcessServer`)
unless a test is about processes (an edge-client child, a port held by another socket).
A *poison* frame is a valid container that fails later: here a real task model that
raises on frames wider than :data:`POISON_WIDTH` (the failure of a model on a frame it
cannot handle), and a real bitstream whose garbage latent decodes to non-finite values.
"""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
import threading
import time
from typing import List, Optional, Sequence, Tuple

import grpc
import pytest
import torch

from icmh.cloud.pipeline import Job, Pipeline
from icmh.cloud.server import SERVER_LIMITS, ServerConfig
from icmh.codec.bitstream import pack_frame, parse_frame
from icmh.codec.loader import CodecOptions, open_frame_codec
from icmh.results import TaskResult
from icmh.service.result_proto import result_from_proto
from icmh.taskmodels import ModelOptions, TaskModel, load_task_model
from icmh.tasks import Task
from icmh.v1 import icmh_pb2 as pb

from server_process import ROOT
from support import InProcessServer, smooth_image

POISON_WIDTH = 96
TINY = CodecOptions(codec="mbt2018-mean-tiny", quality=1, random_adapters=True, limits=SERVER_LIMITS)
TINY_ARGS = ["--codec", "mbt2018-mean-tiny", "--quality", "1", "--random-adapters"]


class FailsOnWideFrames(TaskModel):
    """The real PNG consumer, except that frames wider than :data:`POISON_WIDTH` make it raise."""

    name = "png"
    tasks = (Task.HUMAN,)

    def __init__(self) -> None:
        super().__init__()
        self.inner = load_task_model(Task.HUMAN)

    def infer_prepared(self, inputs, task=None, sizes=None) -> List[TaskResult]:
        if any(image.shape[-1] > POISON_WIDTH for image in inputs):
            raise RuntimeError("CUDA out of memory. Tried to allocate 7.50 GiB (a secret allocator message)")
        return self.inner.infer_prepared(inputs, task, sizes)

    def features(self, x):
        return [x]


@pytest.fixture(scope="module")
def frame_codec():
    return open_frame_codec(TINY, [Task.DETECTION])


def _poisoned_server(**settings) -> InProcessServer:
    """A server for task human whose model fails on wide frames (see :class:`FailsOnWideFrames`)."""
    config = ServerConfig(codec=TINY, tasks=[Task.HUMAN], **settings)

    def make(metrics):
        return Pipeline(open_frame_codec(TINY), {Task.HUMAN: FailsOnWideFrames()}, metrics)

    return InProcessServer(config, make)


def _plain_server(**settings) -> InProcessServer:
    """A server for task human as ``cloud-server`` builds it."""
    return InProcessServer(ServerConfig(codec=TINY, tasks=[Task.HUMAN], **settings))


def _requests(frames: Sequence[bytes], first: int = 0) -> List[pb.InferRequest]:
    return [pb.InferRequest(frame_id=first + i, bitstream=data) for i, data in enumerate(frames)]


def test_a_poison_frame_gets_a_per_frame_internal_error_and_the_stream_goes_on(frame_codec, caplog):
    server = _poisoned_server()
    try:
        good = frame_codec.encode([smooth_image(64, 64)], Task.HUMAN)[0].data
        poison = frame_codec.encode([smooth_image(64, 128)], Task.HUMAN)[0].data
        with caplog.at_level("ERROR", logger="cloud_server"):
            responses = list(server.stub.StreamInfer(iter(_requests([good, poison, good, poison, good])), timeout=120))
        assert [r.frame_id for r in responses] == [0, 1, 2, 3, 4]
        assert [r.HasField("error") for r in responses] == [False, True, False, True, False]
        error = responses[1].error
        assert error.code == grpc.StatusCode.INTERNAL.value[0]
        assert "internal error" in error.message and "GiB" not in error.message  # nothing of the allocator leaks
        assert server.value("icmh_requests_total", task="human", code="INTERNAL") == 2
        assert server.value("icmh_requests_total", task="human", code="OK") == 3
        logged = [r for r in caplog.records if "internal error" in r.getMessage()]
        assert len(logged) == 2 and all(r.exc_info for r in logged)  # once per frame, with its traceback
    finally:
        server.stop()


def test_a_poison_frame_in_a_batch_does_not_take_its_batch_with_it(frame_codec):
    from icmh.cloud.metrics import CloudMetrics

    pipeline = Pipeline(open_frame_codec(TINY), {Task.HUMAN: FailsOnWideFrames()}, CloudMetrics())
    wide = [frame_codec.encode([smooth_image(64, 128, seed)], Task.HUMAN)[0].data for seed in range(2)]
    narrow = [frame_codec.encode([smooth_image(64, 64, seed)], Task.HUMAN)[0].data for seed in range(3)]
    jobs = [Job(i, data) for i, data in enumerate(narrow)]
    assert all(pipeline.admit(job) is None for job in jobs)
    batched = pipeline.run_batch(jobs)
    single = [pipeline.run(i, data) for i, data in enumerate(narrow)]
    assert [_result(r) for r in batched] == [_result(r) for r in single]
    wide_jobs = [Job(i, data) for i, data in enumerate(wide)]
    assert all(pipeline.admit(job) is None for job in wide_jobs)
    assert all(r.error.code == grpc.StatusCode.INTERNAL.value[0] for r in pipeline.run_batch(wide_jobs))


def _result(response: pb.InferResponse) -> Tuple:
    """A response without its timings (which differ between runs)."""
    copy = pb.InferResponse()
    copy.CopyFrom(response)
    copy.ClearField("times")
    return copy.SerializeToString(deterministic=True)


@pytest.mark.parametrize("task, model", [(Task.DETECTION, "yolox-nano"), (Task.CLASSIFICATION, "mobilenet-v2"),
                                         (Task.SEGMENTATION, "yolov5n-seg")])
def test_batching_returns_the_unbatched_results(frame_codec, task, model):
    """Decoding is bit-exact whatever the batch; the task model's CPU kernels depend on the batch size,
    so its floats may differ in the last bits: the same objects and classes, boxes within 1e-3 px,
    scores within 1e-5, masks (nearly) the same pixels."""
    from icmh.cloud.metrics import CloudMetrics
    from icmh.taskmodels import TASK_MODELS

    if not TASK_MODELS[model].files_present():
        pytest.skip(f"{model} files not found (set ICMH_MODELS_DIR)")
    codec = open_frame_codec(TINY, [task])
    pipeline = Pipeline(codec, {task: load_task_model(task, model, ModelOptions(score_threshold=0.05))},
                        CloudMetrics())
    frames = [data.data for data in codec.encode([smooth_image(96, 128, seed, cell=8) for seed in range(4)], task)]
    jobs = [Job(i, data) for i, data in enumerate(frames)]
    assert all(pipeline.admit(job) is None for job in jobs)
    batched = pipeline.run_batch(jobs)
    assert all(not r.HasField("error") for r in batched)
    for one_batch, alone in zip(batched, [pipeline.run(i, data) for i, data in enumerate(frames)]):
        _assert_same_result(result_from_proto(one_batch), result_from_proto(alone))


def _assert_same_result(a: TaskResult, b: TaskResult) -> None:
    from pycocotools import mask as mask_utils

    assert (a.task, a.model, a.height, a.width) == (b.task, b.model, b.height, b.width)
    assert [d.label for d in a.detections] == [d.label for d in b.detections]
    for x, y in zip(a.detections, b.detections):
        assert x.score == pytest.approx(y.score, abs=1e-5)
        assert (x.box.x0, x.box.y0, x.box.x1, x.box.y1) == pytest.approx((y.box.x0, y.box.y0, y.box.x1, y.box.y1),
                                                                          abs=1e-3)
        if x.mask_rle or y.mask_rle:
            assert mask_utils.iou([x.mask_rle], [y.mask_rle], [0])[0][0] > 0.99
    assert [c.index for c in a.classes] == [c.index for c in b.classes]
    assert [c.score for c in a.classes] == pytest.approx([c.score for c in b.classes], abs=1e-5)


def _nan_frame(frame_codec) -> bytes:
    """A valid container with the real z string and index check of a 64×64 frame and a garbage y string
    that decodes to non-finite values (the first such string of a fixed random sequence)."""
    frame = parse_frame(frame_codec.encode([torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(0))],
                                           Task.HUMAN)[0].data)
    rng = random.Random(0)
    for _ in range(400):
        y = bytes(rng.getrandbits(8) for _ in range(rng.choice([16, 64, 256, 1024])))
        data = pack_frame(frame.header, [y, frame.strings[1]])
        try:
            decoded = frame_codec.decode([data])[0]
        except Exception:  # noqa: BLE001 — strings the decoder refuses are not what is looked for
            continue
        if not torch.isfinite(decoded.image).all():
            return data
    pytest.fail("no garbage string decoding to non-finite values was found")


def test_garbage_that_decodes_to_nan_is_an_error_never_an_ok_result(frame_codec):
    from icmh.cloud.metrics import CloudMetrics

    data = _nan_frame(frame_codec)
    pipeline = Pipeline(open_frame_codec(TINY), {Task.HUMAN: load_task_model(Task.HUMAN)}, CloudMetrics())
    response = pipeline.run(7, data)
    assert response.HasField("error") and "non-finite" in response.error.message
    assert response.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]


def test_the_cost_of_a_frame_is_bounded_before_any_decoding(frame_codec):
    """A tiny frame may not declare a huge image, carry a huge string, or an extreme shape."""
    from icmh.cloud.metrics import CloudMetrics

    pipeline = Pipeline(open_frame_codec(TINY), {Task.HUMAN: load_task_model(Task.HUMAN)}, CloudMetrics())
    real = parse_frame(frame_codec.encode([smooth_image(64, 64)], Task.HUMAN)[0].data)
    import dataclasses

    huge = pack_frame(dataclasses.replace(real.header, height=2160, width=3840), list(real.strings))
    started = time.perf_counter()
    answer = pipeline.run(1, huge)
    assert answer.error.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0] and "max_pixels" in answer.error.message
    long_string = pack_frame(real.header, [bytes(15 << 20), real.strings[1]])  # 15 MiB on a 64×64 frame
    answer = pipeline.run(2, long_string)
    assert answer.error.code in (grpc.StatusCode.RESOURCE_EXHAUSTED.value[0], grpc.StatusCode.INVALID_ARGUMENT.value[0])
    thin = pack_frame(dataclasses.replace(real.header, height=1, width=4096), list(real.strings))
    answer = pipeline.run(3, thin)
    assert answer.error.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0] and "max_aspect" in answer.error.message
    assert time.perf_counter() - started < 10  # refused from the header and the string lengths, not decoded


def test_a_string_longer_than_its_latent_can_need_is_refused_without_padding_it(frame_codec):
    from icmh.cloud.metrics import CloudMetrics
    import tracemalloc

    pipeline = Pipeline(open_frame_codec(TINY), {Task.HUMAN: load_task_model(Task.HUMAN)}, CloudMetrics())
    real = parse_frame(frame_codec.encode([smooth_image(64, 64)], Task.HUMAN)[0].data)
    data = pack_frame(real.header, [os.urandom(4 << 20), real.strings[1]])
    tracemalloc.start()
    answer = pipeline.run(1, data)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert answer.HasField("error") and "longer than any encoder writes" in answer.error.message
    assert peak < 64 << 20  # before: the rANS padding allocated 128× the string (512 MiB here)


def test_refusals_are_counted_by_reason(frame_codec):
    server = _poisoned_server(max_pending=1)
    try:
        data = frame_codec.encode([smooth_image(64, 64)], Task.HUMAN)[0].data
        futures = [server.stub.Infer.future(pb.InferRequest(frame_id=i, bitstream=data), timeout=120)
                   for i in range(8)]
        codes = []
        for future in futures:
            try:
                future.result()
                codes.append("OK")
            except grpc.RpcError as exc:
                codes.append(exc.code().name)
        assert "OK" in codes and "RESOURCE_EXHAUSTED" in codes
        assert server.value("icmh_refused_total", reason="overloaded") == codes.count("RESOURCE_EXHAUSTED")
        import dataclasses

        real = parse_frame(data)
        huge = pack_frame(dataclasses.replace(real.header, height=2160, width=3840), list(real.strings))
        with pytest.raises(grpc.RpcError) as info:
            server.stub.Infer(pb.InferRequest(frame_id=9, bitstream=huge), timeout=60)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert server.value("icmh_refused_total", reason="too_large") == 1
    finally:
        server.stop()


def test_an_idle_stream_is_ended(frame_codec):
    server = _poisoned_server(stream_idle_timeout=1.0)
    ended = threading.Event()
    try:
        def idle():
            """One frame, then nothing until the stream has ended (the behaviour under test: a silent client)."""
            yield pb.InferRequest(frame_id=0, bitstream=frame_codec.encode([smooth_image(64, 64)], Task.HUMAN)[0].data)
            ended.wait(60)
            yield pb.InferRequest(frame_id=1, bitstream=b"never read")

        answered = []
        with pytest.raises(grpc.RpcError) as info:
            try:
                for response in server.stub.StreamInfer(idle(), timeout=60):
                    answered.append(response.frame_id)
            finally:
                ended.set()
        assert answered == [0] and info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert server.value("icmh_refused_total", reason="idle") == 1
    finally:
        server.stop()


def _edge(*argv: str, env: Optional[dict] = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "icmh.edge.cli", *argv], cwd=ROOT, capture_output=True, text=True,
                          env=dict(os.environ, ICMH_OFFLINE="1", **(env or {})), timeout=600)


def test_the_edge_reports_a_poison_frame_once_and_goes_on(tmp_path, kodak_dir):
    """Before: the edge resent the poison frame until its budget ran out, then lost every later frame."""
    images = tmp_path / "images"
    images.mkdir()
    from PIL import Image

    for index, size in enumerate([(64, 64), (128, 64), (64, 64), (64, 64)]):  # the second is wide: poison
        Image.open(kodak_dir / "kodim01.png").convert("RGB").resize(size).save(images / f"{index}.png")
    server = _poisoned_server()
    try:
        out = tmp_path / "results.jsonl"
        result = _edge("--images", str(images), "--task", "human", *TINY_ARGS, "--server", f"127.0.0.1:{server.port}",
                       "--output", str(out))
        assert result.returncode == 0, result.stderr
        records = [json.loads(line) for line in out.read_text().splitlines()]
        assert [r["frame_id"] for r in records] == [0, 1, 2, 3]
        assert "error" in records[1] and records[1]["error"]["code"] == grpc.StatusCode.INTERNAL.value[0]
        assert all("result" in records[i] for i in (0, 2, 3))
        assert server.value("icmh_requests_total", task="human", code="INTERNAL") == 1  # never resent
        assert "4 answered, 1 with errors" in result.stderr
    finally:
        server.stop()


def test_a_file_source_loses_no_frame_when_the_server_is_busy(tmp_path):
    """Before: frames answered RESOURCE_EXHAUSTED were written as final results and lost."""
    server = _plain_server(max_pending=1)
    try:
        out = tmp_path / "results.jsonl"
        result = _edge("--demo", "--frames", "12", "--streams", "3", "--window", "4", "--task", "human", *TINY_ARGS,
                       "--server", f"127.0.0.1:{server.port}", "--output", str(out))
        assert result.returncode == 0, result.stderr
        records = [json.loads(line) for line in out.read_text().splitlines()]
        assert [r["frame_id"] for r in records] == list(range(12))
        assert all("result" in r for r in records), [r.get("error") for r in records]
        assert server.value("icmh_refused_total", reason="overloaded") > 0  # the server was really busy
    finally:
        server.stop()


def test_a_port_in_use_is_one_error_line():
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        for flag in ("--port", "--metrics-port"):
            argv = [sys.executable, "-m", "icmh.cloud.cli", "--tasks", "human", *TINY_ARGS, "--port",
                    str(port if flag == "--port" else 0), "--metrics-port", str(port if flag == "--metrics-port" else 0)]
            result = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300,
                                    env=dict(os.environ, ICMH_OFFLINE="1"))
            assert result.returncode == 2, result.stderr
            lines = result.stderr.strip().splitlines()
            assert lines[-1].startswith("error: cannot serve") and "Traceback" not in result.stderr, result.stderr
            assert str(port) in lines[-1]
