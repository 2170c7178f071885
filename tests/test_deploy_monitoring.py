"""Prometheus and Grafana configuration against live processes on loopback.

A real cloud server (random weights, tiny codec, task human; in this process, see
:class:`support.InProcessServer`, its metrics on a free port) receives N frames from the
edge client's own streaming code over gRPC (also in this process, so that its /metrics
stays up until Prometheus has scraped the final values: the ``edge-client`` process stops
serving them when its stream ends) while a real ``prometheus`` (Debian's package;
.ci/run installs it) scrapes both with the scrape jobs of deploy/prometheus/prometheus.yml,
re-targeted at the loopback ports. Then: Prometheus' HTTP API counts exactly N frames in
the bits-per-pixel histogram, every panel of the Grafana dashboard, cloud and edge, has
data, and every metric name the dashboard uses is one the server or the edge client really
exports (read from their live /metrics pages). The image's health check script asks the
live server too. Every wait polls its condition (Prometheus' HTTP API) with a deadline.

Prometheus tests skip, saying why, only where ``prometheus``/``promtool`` are missing.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Set

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from icmh.tasks import Task

from server_process import CODEC, ROOT, free_port
from support import InProcessServer, server_config, wait_until

PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")
PROMETHEUS_CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "icmh.json"
HEALTHCHECK = ROOT / "deploy" / "docker" / "healthcheck.py"
FRAMES = 6

needs_prometheus = pytest.mark.skipif(
    PROMETHEUS is None or PROMTOOL is None,
    reason="prometheus/promtool not installed (Debian: apt-get install prometheus; .ci/run installs it as root)")


# --- helpers -------------------------------------------------------------------------------------

def fetch(url: str, timeout: float = 5.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read().decode("utf-8")


def exported_names(text: str) -> Dict[str, Set[str]]:
    """Sample names a Prometheus would store from a /metrics page, with the label names seen.

    Derived from each family's TYPE (a histogram X gives X_bucket, X_sum and X_count; a
    counter X gives X_total), so a family without samples yet (a labelled counter nobody
    incremented) still counts as exported.
    """
    suffixes = {"histogram": ("_bucket", "_sum", "_count"), "counter": ("_total",), "gauge": ("",),
                "summary": ("_sum", "_count", "")}
    names: Dict[str, Set[str]] = {}
    for family in text_string_to_metric_families(text):
        labels = {key for sample in family.samples for key in sample.labels}
        for suffix in suffixes.get(family.type, ("",)):
            names.setdefault(family.name + suffix, set()).update(labels)
    return names


def sample_names(text: str) -> Set[str]:
    return {s.name for family in text_string_to_metric_families(text) for s in family.samples}


def dashboard_exprs() -> List[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
    assert exprs, "the dashboard has no queries"
    return exprs


def concrete(expr: str) -> str:
    """A dashboard expression with Grafana's variables filled in, as Grafana would send it."""
    return expr.replace("$__rate_interval", "1m").replace("$task", ".*")


METRIC = re.compile(r"\b(icmh_[a-z0-9_]+)\b")


class Prometheus:
    """A prometheus process on a free loopback port with its own storage folder."""

    def __init__(self, config: dict, folder: Path) -> None:
        self.port = free_port()
        config_file = folder / "prometheus.yml"
        config_file.write_text(yaml.safe_dump(config))
        check = subprocess.run([PROMTOOL, "check", "config", str(config_file)], capture_output=True, text=True,
                               timeout=30)
        assert check.returncode == 0, check.stdout + check.stderr
        self.log = open(folder / "prometheus.log", "w")
        self.proc = subprocess.Popen(
            [PROMETHEUS, f"--config.file={config_file}", f"--storage.tsdb.path={folder / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdout=self.log, stderr=subprocess.STDOUT)
        self.url = f"http://127.0.0.1:{self.port}"
        wait_until(lambda: self._ready(folder), 60, "prometheus is ready", interval=0.2)

    def _ready(self, folder: Path) -> bool:
        """Whether /-/ready answers (asserts the process is still running)."""
        assert self.proc.poll() is None, (folder / "prometheus.log").read_text()
        try:
            return bool(fetch(f"{self.url}/-/ready", timeout=2))
        except (urllib.error.URLError, ConnectionError, OSError):
            return False

    def query(self, expr: str) -> dict:
        """The JSON answer of /api/v1/query (instant query, now); asserts it succeeded."""
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        try:
            answer = json.loads(fetch(url))
        except urllib.error.HTTPError as exc:   # 400 for a bad expression: show Prometheus' reason
            answer = json.loads(exc.read().decode())
        assert answer["status"] == "success", f"{expr}: {answer.get('error')}"
        return answer["data"]

    def value(self, expr: str) -> Optional[float]:
        result = self.query(expr)["result"]
        return float(result[0]["value"][1]) if result else None

    def wait_for(self, expr: str, expected: float, timeout: float = 30.0) -> Optional[float]:
        """Poll ``expr`` until its value is ``expected``; returns the last value read."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.value(expr)
            if value == expected or time.monotonic() > deadline:
                return value
            time.sleep(0.25)

    def without_data(self, exprs: List[str], timeout: float = 60.0) -> List[str]:
        """Poll every expression until each has returned data; those still without any at the deadline."""
        empty = list(exprs)
        deadline = time.monotonic() + timeout
        while empty and time.monotonic() < deadline:
            empty = [expr for expr in empty if not self.query(concrete(expr))["result"]]
            if empty:
                time.sleep(0.25)
        return empty

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.log.close()


def run_edge_client(server_port: int, metrics_port: int, frames: int) -> dict:
    """``edge-client --demo --frames N --task human --metrics-port PORT`` (the tiny random codec), run in
    this process with the client's own parser, codec options and :func:`icmh.edge.cli.stream`.

    Its /metrics page (the client's :class:`EdgeMetrics`, served by the same function the
    client uses) stays up after the last frame until the caller stops ``run["http"]``:
    the ``edge-client`` process stops serving when its stream ends, before Prometheus
    has scraped the final values. Returns the exit status, the page read after the
    stream ended and the metrics server.
    """
    from icmh.cli.common import codec_options
    from icmh.codec.loader import open_frame_codec
    from icmh.edge import cli as edge_cli
    from icmh.edge.metrics import EdgeMetrics
    from icmh.edge.sources import open_source
    from icmh.service.metrics import start_metrics_server

    args = edge_cli.build_parser().parse_args(
        ["--demo", "--frames", str(frames), "--task", "human", "--server", f"127.0.0.1:{server_port}",
         "--metrics-port", str(metrics_port), "--output", "/dev/null", *CODEC])
    metrics = EdgeMetrics()
    http = start_metrics_server(args.metrics_port, metrics.registry)
    frame_codec = open_frame_codec(codec_options(args), [Task.HUMAN])
    capture = edge_cli.Capture.of([open_source("demo", None, frames)])
    code = edge_cli.stream(args, capture, frame_codec, Task.HUMAN, metrics)
    return {"code": code, "metrics": fetch(f"http://127.0.0.1:{metrics_port}/metrics"), "http": http}


# --- fixtures ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def server() -> Iterator[InProcessServer]:
    """A cloud server for task human, its metrics on a free port."""
    instance = InProcessServer(server_config([Task.HUMAN]), metrics_http=True)
    yield instance
    instance.stop()


@pytest.fixture(scope="module")
def prometheus(server, tmp_path_factory) -> Iterator[Prometheus]:
    if PROMETHEUS is None or PROMTOOL is None:
        pytest.skip("prometheus/promtool not installed (Debian: apt-get install prometheus; .ci/run installs it)")
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    config["global"].update(scrape_interval="1s", scrape_timeout="1s")
    edge_port = free_port()
    live_targets = {"icmh-cloud-server": f"127.0.0.1:{server.metrics_port}", "icmh-edge": f"127.0.0.1:{edge_port}"}
    for job in config["scrape_configs"]:
        if job["job_name"] in live_targets:
            job["static_configs"] = [{"targets": [live_targets.pop(job["job_name"])]}]
    assert not live_targets, f"deploy/prometheus/prometheus.yml has no job {sorted(live_targets)}"
    config["scrape_configs"] = [job for job in config["scrape_configs"] if job["job_name"].startswith("icmh-")]
    instance = Prometheus(config, tmp_path_factory.mktemp("prometheus"))
    instance.edge_port = edge_port
    yield instance
    instance.stop()


@pytest.fixture(scope="module")
def streamed(server, prometheus) -> Iterator[dict]:
    """FRAMES frames sent by the edge client while Prometheus scrapes server and client."""
    from icmh.service.metrics import stop_metrics_server

    assert prometheus.wait_for('up{job="icmh-cloud-server"}', 1.0, timeout=20) == 1.0
    run = run_edge_client(server.port, prometheus.edge_port, FRAMES)
    assert run["code"] == 0
    yield run
    stop_metrics_server(*run["http"])


# --- tests ---------------------------------------------------------------------------------------

@needs_prometheus
def test_promtool_accepts_the_compose_prometheus_config():
    done = subprocess.run([PROMTOOL, "check", "config", str(PROMETHEUS_CONFIG)], capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 0, done.stdout + done.stderr


@needs_prometheus
def test_prometheus_scrapes_exactly_the_frames_the_server_received(server, prometheus, streamed):
    expr = 'sum(icmh_bits_per_pixel_count{job="icmh-cloud-server",task="human"})'
    assert prometheus.wait_for(expr, FRAMES) == FRAMES
    assert prometheus.wait_for('sum(icmh_requests_total{task="human",code="OK"})', FRAMES) == FRAMES
    assert prometheus.wait_for('sum(icmh_stage_duration_seconds_count{stage="total"})', FRAMES) == FRAMES
    assert prometheus.value("icmh_pending_requests") == 0
    # and the server's own page agrees with what Prometheus stored
    scraped = server.scrape()
    assert scraped[("icmh_bits_per_pixel_count",
                    (("codec", "mbt2018-mean-tiny"), ("quality", "1"), ("task", "human")))] == FRAMES


DROPPED = "icmh_edge_frames_dropped_total"


@needs_prometheus
def test_every_dashboard_panel_has_data_after_frames_were_sent(prometheus, streamed):
    """Every query of every panel, cloud and edge, returns data (rate() once two scrapes followed the
    frames); the dropped-frames panel has none because no frame was dropped."""
    assert prometheus.wait_for('sum(icmh_edge_frames_sent_total{job="icmh-edge"})', FRAMES) == FRAMES
    exprs = dashboard_exprs()
    empty = prometheus.without_data([expr for expr in exprs if DROPPED not in expr])
    assert not empty, "dashboard queries without data after frames were sent:\n" + "\n".join(empty)
    assert re.search(rf"^{DROPPED}\{{", streamed["metrics"], re.M) is None  # nothing dropped: no series
    dropped = [expr for expr in exprs if DROPPED in expr]
    assert dropped and all(prometheus.query(concrete(expr))["result"] == [] for expr in dropped)


@needs_prometheus
def test_dashboard_uses_only_metric_names_and_labels_the_processes_export(server, streamed):
    cloud_text = fetch(f"http://127.0.0.1:{server.metrics_port}/metrics")
    cloud, edge = exported_names(cloud_text), exported_names(streamed["metrics"])
    used = {name for expr in dashboard_exprs() for name in METRIC.findall(expr)}
    assert used, "no icmh_ metric in the dashboard"
    # now that frames went through, the live pages carry samples of every one of them (no frame was dropped)
    live = sample_names(cloud_text) | sample_names(streamed["metrics"])
    assert {name for name in used if name != DROPPED} <= live, sorted(used - live - {DROPPED})
    unknown = {n for n in used if n not in (edge if n.startswith("icmh_edge_") else cloud)}
    assert not unknown, f"dashboard metrics nobody exports: {sorted(unknown)}"
    # every SYSTEM.md panel is there: bpp, latency per stage, requests, pending, streams, drops
    assert {"icmh_bits_per_pixel_bucket", "icmh_stage_duration_seconds_bucket", "icmh_requests_total",
            "icmh_pending_requests", "icmh_active_streams", "icmh_edge_frames_dropped_total"} <= used
    # grouping and matcher labels exist on the metric (or are Prometheus' target labels)
    for expr in dashboard_exprs():
        labels = set()
        for group in re.findall(r"\bby \(([^)]*)\)", expr):
            labels |= {label.strip() for label in group.split(",")}
        labels |= set(re.findall(r"([a-z_]+)\s*[!=]~?\"", expr))
        seen = [(edge if name.startswith("icmh_edge_") else cloud)[name] for name in METRIC.findall(expr)]
        if not all(seen):
            continue   # a family without samples yet (no frame was dropped): its labels are not on the page
        known = set().union({"le", "instance", "job"}, *seen)
        assert labels <= known, (expr, labels - known)


def test_dashboard_has_the_required_panels():
    dashboard = json.loads(DASHBOARD.read_text())
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    exprs = {p["title"]: [t["expr"] for t in p["targets"]] for p in panels}
    heatmaps = [p for p in panels if p["type"] == "heatmap"]
    assert any("icmh_bits_per_pixel_bucket" in t["expr"] and t.get("format") == "heatmap"
               for p in heatmaps for t in p["targets"])
    latency = next(e for title, e in exprs.items() if "per stage" in title)
    for q in ("0.5", "0.95", "0.99"):
        assert any(f"histogram_quantile({q}," in e and "by (stage, le)" in e for e in latency), q
    assert any("by (task, code)" in e and "icmh_requests_total" in e for es in exprs.values() for e in es)
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    assert all(p["datasource"]["uid"] == "${datasource}" for p in panels)
    datasources = yaml.safe_load(
        (ROOT / "deploy" / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text())
    variable = next(v for v in dashboard["templating"]["list"] if v["name"] == "datasource")
    assert variable["current"]["value"] == datasources["datasources"][0]["uid"]
    providers = yaml.safe_load(
        (ROOT / "deploy" / "grafana" / "provisioning" / "dashboards" / "icmh.yml").read_text())
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    mounts = compose["services"]["grafana"]["volumes"]
    assert f"./deploy/grafana/dashboards:{providers['providers'][0]['options']['path']}:ro" in mounts


def test_image_health_check_reports_serving_and_unreachable(server):
    ok = subprocess.run([sys.executable, str(HEALTHCHECK), "--port", str(server.port)], capture_output=True,
                        text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    down = subprocess.run([sys.executable, str(HEALTHCHECK), "--port", str(free_port()), "--timeout", "1"],
                          capture_output=True, text=True, timeout=60)
    assert down.returncode == 1 and "UNAVAILABLE" in down.stderr
