"""Helpers the tests share (imported as ``support``; fixtures stay in ``conftest.py``)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Sequence

from icmh.codec.adapter_checkpoint import save_adapters
from icmh.codec.frame_codec import FrameCodec
from icmh.codec.weights import load_base_codec
from icmh.models.adapted import AdapterConfig
from icmh.tasks import Task


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


class InProcessServer:
    """A real ``cloud-server`` (grpc.aio, health, reflection, batching) on a free loopback port,
    run by :func:`icmh.cloud.server.serve` in a thread of this process (start-up: no new process)."""

    def __init__(self, config, make_pipeline=None) -> None:
        """``make_pipeline(metrics)`` builds the pipeline (default: from ``config``, as the CLI does)."""
        import asyncio
        import threading

        import grpc

        from icmh.cloud.metrics import CloudMetrics
        from icmh.cloud.server import serve
        from icmh.v1 import icmh_pb2_grpc as pb_grpc

        config.port, config.metrics_port = 0, None
        self.config = config
        self.metrics = CloudMetrics()
        pipeline = make_pipeline(self.metrics) if make_pipeline else None
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._failure: list = []

        async def main() -> None:
            self._stop = asyncio.Event()
            ready = asyncio.Event()
            task = asyncio.ensure_future(serve(config, pipeline, self.metrics, ready, self._stop))
            await asyncio.wait({task, asyncio.ensure_future(ready.wait())}, return_when=asyncio.FIRST_COMPLETED)
            self._ready.set()
            await task

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
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.port}")
        self.stub = pb_grpc.InferenceServiceStub(self.channel)

    def value(self, name: str, **labels: str) -> float:
        """The current value of one sample of the server's metrics (0 if absent)."""
        for family in self.metrics.registry.collect():
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    return sample.value
        return 0.0

    def stop(self) -> None:
        """Drain and stop the server (as SIGTERM would) and wait for its thread."""
        self.channel.close()
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(120)
