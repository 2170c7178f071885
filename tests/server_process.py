"""A real cloud-server child process on loopback, for the tests where the process itself is under test
(signals, a kill, its memory); elsewhere servers run in the test process (:class:`support.InProcessServer`)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path
from typing import Dict, Optional, Sequence

import grpc
from prometheus_client.parser import text_string_to_metric_families

from icmh.v1 import icmh_pb2_grpc as pb_grpc

ROOT = Path(__file__).resolve().parent.parent
CODEC = ["--codec", "mbt2018-mean-tiny", "--quality", "1", "--random-weights"]


class ServerProcess:
    """A cloud-server child process on free loopback ports."""

    def __init__(self, *extra: str, port: int = 0, env: Optional[Dict[str, str]] = None,
                 codec: Sequence[str] = CODEC) -> None:
        env = dict(os.environ, ICMH_OFFLINE="1", **(env or {}))
        self.adapters = extra[extra.index("--adapters") + 1] if "--adapters" in extra else None
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "icmh.cloud.cli", "--port", str(port), "--metrics-port", "0",
             "--detector-min-size", "256", *codec, *extra],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list = []
        for line in self.proc.stdout:
            self.lines.append(line)
            found = re.search(r"listening on 127\.0\.0\.1:(\d+) \(metrics on port (\d+)\)", line)
            if found:
                self.port, self.metrics_port = int(found.group(1)), int(found.group(2))
                break
        else:
            raise RuntimeError("cloud-server did not start:\n" + "".join(self.lines))
        self._reader = threading.Thread(target=lambda: self.lines.extend(self.proc.stdout), daemon=True)
        self._reader.start()
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.port}")
        self.stub = pb_grpc.InferenceServiceStub(self.channel)

    def scrape(self) -> dict:
        text = urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10).read().decode()
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(text) for s in family.samples}

    def kill(self) -> None:
        """SIGKILL: the server vanishes without draining."""
        self.channel.close()
        self.proc.kill()
        self.proc.wait(timeout=30)

    def stop(self) -> int:
        self.channel.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=60)
        self._reader.join(timeout=5)
        return code


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
