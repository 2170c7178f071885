"""Helpers the tests share (imported as ``support``; fixtures stay in ``conftest.py``)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Iterable, List, Optional, Sequence, Tuple, TypeVar

import torch
from hypothesis import strategies as st

from icmh.codec.adapter_checkpoint import save_adapters
from icmh.codec.bitstream import DEFAULT_LIMITS, FrameHeader, Limits, pack_frame
from icmh.codec.frame_codec import FrameCodec
from icmh.codec.weights import load_base_codec
from icmh.models.adapted import AdapterConfig
from icmh.tasks import Task

T = TypeVar("T")


def smooth_image(height: int, width: int, seed: int = 0, cell: int = 16) -> torch.Tensor:
    """A synthetic smooth 3×H×W image in [0, 1]; smaller ``cell`` means more detail."""
    generator = torch.Generator().manual_seed(seed)
    low = torch.rand(1, 3, max(1, height // cell), max(1, width // cell), generator=generator)
    return torch.nn.functional.interpolate(low, size=(height, width), mode="bicubic",
                                           align_corners=False)[0].clamp(0, 1)


def wait_until(condition: Callable[[], T], timeout: float, what: str, interval: float = 0.05) -> T:
    """Poll ``condition`` until it returns something true and return that; fail after ``timeout`` seconds.

    ``what`` names the awaited condition in the failure message ("every server answered").
    """
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:g} s: {what}")
        time.sleep(interval)


def frame_header(**overrides: object) -> FrameHeader:
    """A valid frame header (codec 3, quality 5, task 2, 480×640, fixed hashes and index check) with
    ``overrides``."""
    fields: dict = dict(codec_id=3, quality=5, task_id=2, height=480, width=640, adapter_hash=bytes(range(1, 9)),
                        base_hash=b"\xde\xad\xbe\xef", index_check=0x12345678)
    fields.update(overrides)
    return FrameHeader(**fields)  # type: ignore[arg-type]


@st.composite
def frame_headers(draw: st.DrawFn, limits: Limits = DEFAULT_LIMITS) -> FrameHeader:
    """Any header :func:`~icmh.codec.bitstream.pack_frame` accepts within ``limits``."""
    height = draw(st.integers(1, limits.max_height))
    width = draw(st.integers(1, min(limits.max_width, limits.max_pixels // height)))
    return FrameHeader(
        codec_id=draw(st.integers(1, 255)), quality=draw(st.integers(1, 255)), task_id=draw(st.integers(0, 255)),
        height=height, width=width, adapter_hash=draw(st.binary(min_size=8, max_size=8)),
        base_hash=draw(st.binary(min_size=4, max_size=4)), index_check=draw(st.integers(0, 2**32 - 1)))


@st.composite
def valid_frames(draw: st.DrawFn) -> tuple:
    """``(header, strings, packed frame)`` of a valid frame with 1 to 4 strings of up to 256 bytes."""
    header = draw(frame_headers())
    strings = draw(st.lists(st.binary(max_size=256), min_size=1, max_size=4))
    return header, strings, pack_frame(header, strings)


def coco_results(image_id: int, result, masks: bool = False) -> List[dict]:
    """The detections of one :class:`~icmh.results.TaskResult` (in the image's own pixels) as COCO
    result entries (box ``[x, y, w, h]``, category id, score and, with ``masks``, the RLE mask)."""
    entries = []
    for found in result.detections:
        entry = {"image_id": image_id, "category_id": found.label, "score": found.score,
                 "bbox": [found.box.x0, found.box.y0, found.box.width, found.box.height]}
        if masks:
            entry["segmentation"] = found.mask_rle
        entries.append(entry)
    return entries


def cocoeval_ap(coco, results: List[dict], image_ids: Sequence[int], iou_type: str = "bbox") -> tuple:
    """AP@[.5:.95] and AP@.5 in percent of COCO ``results`` on ``image_ids``, by pycocotools' COCOeval
    itself: the reference the evaluation's own scoring is checked against."""
    import contextlib
    import io

    from pycocotools.cocoeval import COCOeval

    assert results, "no detection: the AP would be a trivial 0"
    with contextlib.redirect_stdout(io.StringIO()):  # COCOeval prints its table
        evaluator = COCOeval(coco, coco.loadRes(results), iou_type)
        evaluator.params.imgIds = list(image_ids)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return 100 * evaluator.stats[0], 100 * evaluator.stats[1]


def identity_adapter_files(folder: Path, codec: str, quality: int, tasks: Sequence[Task]) -> List[Path]:
    """Adapter files whose up-projections are zero: the adapted codec is exactly the base codec.

    With a trained base codec and the real task models they give real results without
    trained adapters (the adapters' own effect is tested elsewhere).
    """
    frame_codec = FrameCodec(load_base_codec(codec, quality))
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for task in tasks:
        frame_codec.codec.add_adapters(task, AdapterConfig(init="zero"))
        path = folder / f"{task.value}-{codec}-q{quality}.safetensors"
        save_adapters(path, frame_codec.codec, task, frame_codec.loaded.fingerprint)
        files.append(path)
    return files


def server_config(tasks: Sequence[Task] = (Task.HUMAN, Task.DETECTION, Task.SEGMENTATION, Task.CLASSIFICATION),
                  codec=None, score_threshold: float = 0.5, **settings):
    """The :class:`~icmh.cloud.server.ServerConfig` ``cloud-server`` builds from the command line of
    :class:`server_process.ServerProcess`: ``--codec mbt2018-mean-tiny --quality 1 --random-weights
    --detector-min-size 256`` (seeded random codec, adapters and task models), plus ``settings``.

    ``codec`` (:class:`~icmh.codec.loader.CodecOptions`) replaces the random tiny codec; the task
    models are then the real ones, as without ``--random-weights``.
    """
    from icmh.cloud.server import SERVER_LIMITS, ServerConfig
    from icmh.codec.loader import CodecOptions
    from icmh.taskmodels import ModelOptions

    random_weights = codec is None
    if codec is None:
        codec = CodecOptions(codec="mbt2018-mean-tiny", quality=1, random_codec=True, random_adapters=True)
    codec.limits = SERVER_LIMITS
    models = ModelOptions(random_weights=random_weights, score_threshold=score_threshold, min_size=256)
    return ServerConfig(codec=codec, tasks=list(tasks), model_options=models, **settings)


class InProcessServer:
    """A real ``cloud-server`` (grpc.aio, health, reflection, batching) on a free loopback port,
    run by :func:`icmh.cloud.server.serve` in a thread of this process (start-up: no new process).

    With ``metrics_http`` its metrics are also served on a free port (``metrics_port``,
    :meth:`scrape`), as ``cloud-server --metrics-port 0`` does.
    """

    def __init__(self, config, make_pipeline=None, metrics_http: bool = False, metrics=None) -> None:
        """``make_pipeline(metrics)`` builds the pipeline (default: from ``config``, as the CLI does);
        ``metrics`` is the server's :class:`~icmh.cloud.metrics.CloudMetrics` (default: new ones)."""
        import asyncio
        import threading

        import grpc

        from icmh.cloud.metrics import CloudMetrics
        from icmh.cloud.server import serve
        from icmh.service.metrics import start_metrics_server
        from icmh.v1 import icmh_pb2_grpc as pb_grpc

        config.port, config.metrics_port = 0, None
        self.config = config
        self.metrics = metrics if metrics is not None else CloudMetrics()
        pipeline = make_pipeline(self.metrics) if make_pipeline else None
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._failure: list = []
        self.status: Optional[int] = None

        async def main() -> None:
            self._stop = asyncio.Event()
            ready = asyncio.Event()
            task = asyncio.ensure_future(serve(config, pipeline, self.metrics, ready, self._stop))
            await asyncio.wait({task, asyncio.ensure_future(ready.wait())}, return_when=asyncio.FIRST_COMPLETED)
            self._ready.set()
            self.status = await task

        def run() -> None:
            try:
                self._loop.run_until_complete(main())
            except BaseException as exc:  # noqa: BLE001 — reported to the test that started it
                self._failure.append(exc)
                self._ready.set()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        self._ready.wait(600)
        if self._failure:
            raise self._failure[0]
        self.port = config.port
        self._metrics_http = start_metrics_server(0, self.metrics.registry) if metrics_http else None
        self.metrics_port = self._metrics_http[0].server_port if metrics_http else None
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.port}")
        self.stub = pb_grpc.InferenceServiceStub(self.channel)

    def value(self, name: str, **labels: str) -> float:
        """The current value of one sample of the server's metrics (0 if absent)."""
        for family in self.metrics.registry.collect():
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    return sample.value
        return 0.0

    def scrape(self) -> dict:
        """Every sample of the server's metrics, keyed ``(name, sorted label items)`` as
        :meth:`server_process.ServerProcess.scrape` reads them from /metrics."""
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for family in self.metrics.registry.collect() for s in family.samples}

    def stop(self) -> Optional[int]:
        """Drain and stop the server (as SIGTERM would), wait for its thread; returns serve()'s status."""
        from icmh.service.metrics import stop_metrics_server

        self.channel.close()
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(120)
        if self._metrics_http:
            stop_metrics_server(*self._metrics_http)
            self._metrics_http = None
        return self.status


def call_outcomes(futures: Iterable) -> List[Tuple[object, str]]:
    """Wait for each unary gRPC call future, in order: ``(status code, details)``; an answered call
    is ``(StatusCode.OK, "")``."""
    import grpc

    outcomes = []
    for future in futures:
        try:
            future.result()
            outcomes.append((grpc.StatusCode.OK, ""))
        except grpc.RpcError as exc:
            outcomes.append((exc.code(), exc.details()))
    return outcomes
