"""docker-compose.yml and the Dockerfiles, checked without a Docker engine.

The compose file is validated against the Compose Specification's JSON schema (vendored
in tests/data, see compose-spec.schema.md); the commands it gives each service are parsed
by the real ``cloud-server`` / ``edge-client`` argument parsers; the files it mounts
exist. The Dockerfiles are read for what the deployment relies on (pinned bases, non-root
user, the gRPC health check, the ports).
"""

from __future__ import annotations

import copy
import json
import re
import shlex
from pathlib import Path
from typing import Dict, List

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
SCHEMA_FILE = ROOT / "tests" / "data" / "compose-spec.schema.json"
DOCKER = ROOT / "deploy" / "docker"


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft7Validator:
    schema = json.loads(SCHEMA_FILE.read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def interpolate(text: str, env: Dict[str, str] = {}) -> str:
    """Compose's ``${VAR:-default}`` / ``${VAR}`` interpolation with an empty environment by default."""
    def value(match: re.Match) -> str:
        name, default = match.group(1), match.group(3)
        return env.get(name) or (default or "")
    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(:-([^}]*))?\}", value, text)


def argv(service: dict, default_entrypoint: str, env: Dict[str, str] = {}) -> List[str]:
    """The program and arguments compose would run: entrypoint + command, interpolated and split."""
    entrypoint = service.get("entrypoint", [default_entrypoint])
    command = service.get("command", [])
    command = shlex.split(interpolate(command, env)) if isinstance(command, str) else command
    return [interpolate(part, env) for part in entrypoint] + command


def test_compose_file_is_valid_against_the_compose_spec_schema(compose, validator):
    errors = sorted(validator.iter_errors(compose), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors)


def test_the_schema_check_catches_mistakes(compose, validator):
    broken = copy.deepcopy(compose)
    broken["services"]["cloud-server"]["deploy"]["resources"]["reservations"]["gpus"] = 1   # not a key there
    broken["services"]["grafana"]["ports"] = "3000:3000"   # must be a list
    assert len(list(validator.iter_errors(broken))) >= 2


def test_gpu_server_reserves_one_nvidia_gpu_and_the_cpu_variant_is_a_profile(compose):
    services = compose["services"]
    (device,) = services["cloud-server"]["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"] and device["count"] == 1
    assert "profiles" not in services["cloud-server"]   # `docker compose up` starts it
    assert services["cloud-server-cpu"]["profiles"] == ["cpu"]
    assert "deploy" not in services["cloud-server-cpu"]
    assert services["cloud-server-cpu"]["build"]["args"]["TORCH_INDEX"].endswith("/whl/cpu")
    assert "cloud-server" in services["cloud-server-cpu"]["networks"]["default"]["aliases"]
    assert services["edge"]["profiles"] == ["demo"]
    for name in ("prometheus", "grafana"):
        assert "profiles" not in services[name]


def test_server_commands_are_flags_cloud_server_accepts(compose):
    from icmh.cloud.cli import build_parser

    for name, device in (("cloud-server", "cuda"), ("cloud-server-cpu", "cpu")):
        command = argv(compose["services"][name], "cloud-server")
        assert command[0] == "cloud-server"
        args = build_parser().parse_args(command[1:])
        assert args.device == device and args.host == "0.0.0.0"
        assert (args.port, args.metrics_port) == (50051, 9100)
        assert not args.random_weights   # only when the user asks for it (ICMH_EXTRA_ARGS)
        demo = build_parser().parse_args(argv(compose["services"][name], "cloud-server",
                                              {"ICMH_EXTRA_ARGS": "--random-weights"})[1:])
        assert demo.random_weights
    stop = compose["services"]["cloud-server"]["stop_grace_period"]
    assert float(stop.rstrip("s")) > args.grace


def test_demo_edge_streams_the_demo_scene_to_the_server_over_grpc(compose):
    from icmh.edge.cli import build_parser

    edge = compose["services"]["edge"]
    command = argv(edge, "edge-client")
    assert command[0] == "edge-client"
    args = build_parser().parse_args(command[1:])
    assert args.demo and args.server == "cloud-server:50051" and args.metrics_port == 9101
    assert args.save_dir is None
    # its metrics listen on the compose network, where Prometheus scrapes the service name
    assert args.metrics_host == "0.0.0.0" and "network_mode" not in edge
    prometheus = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    targets = {job["job_name"]: job["static_configs"][0]["targets"] for job in prometheus["scrape_configs"]}
    assert targets["icmh-edge"] == [f"edge:{args.metrics_port}"]
    assert targets["icmh-cloud-server"] == ["cloud-server:9100"]


def test_images_are_pinned_and_mounted_files_exist(compose):
    for name, service in compose["services"].items():
        image = service["image"]
        assert re.search(r":[\w.-]+$", image) and not image.endswith(":latest"), (name, image)
        for volume in service.get("volumes", []):
            source = volume["source"] if isinstance(volume, dict) else volume.split(":")[0]
            if source.startswith("./") and source != "./adapters":   # ./adapters is created on first run
                assert (ROOT / source).exists(), (name, source)
        build = service.get("build")
        if build:
            assert (ROOT / build["context"] / build["dockerfile"]).is_file()
    assert set(compose["volumes"]) >= {"torch-cache"}
    assert any(str(v).startswith("torch-cache:/cache/torch") for v in compose["services"]["cloud-server"]["volumes"])
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"


def dockerfile(name: str) -> str:
    return (DOCKER / name).read_text()


def instructions(text: str, keyword: str) -> List[str]:
    return [line.split(None, 1)[1] for line in text.splitlines() if line.startswith(keyword + " ")]


def test_cloud_server_image_runs_as_non_root_with_a_grpc_health_check():
    text = dockerfile("cloud-server.Dockerfile")
    base = re.search(r"^ARG BASE_IMAGE=(\S+)", text, re.M).group(1)
    assert base.startswith("nvidia/cuda:") and re.search(r":\d+\.\d+\.\d+-", base)
    assert instructions(text, "USER") == ["10001:10001"]
    (healthcheck,) = instructions(text, "HEALTHCHECK")
    assert '"icmh-healthcheck"' in healthcheck
    assert "deploy/docker/healthcheck.py /usr/local/bin/icmh-healthcheck" in text
    assert instructions(text, "EXPOSE") == ["50051 9100"]
    assert "TORCH_HOME=/cache/torch" in text and instructions(text, "VOLUME") == ['["/cache/torch"]']
    assert instructions(text, "ENTRYPOINT") == ['["cloud-server"]']
    assert "-c constraints.txt" in (DOCKER / "install-python-deps.sh").read_text()


def test_edge_image_is_a_small_cpu_image():
    text = dockerfile("edge-client.Dockerfile")
    base = re.search(r"^ARG BASE_IMAGE=(\S+)", text, re.M).group(1)
    assert base.startswith("python:3.11-slim")
    assert re.search(r"^ARG TORCH_INDEX=\S+/whl/cpu$", text, re.M)
    assert instructions(text, "USER") == ["10001:10001"]
    assert instructions(text, "ENTRYPOINT") == ['["edge-client"]']


def test_dockerignore_keeps_what_the_images_copy():
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    for needed in ("shared", "edge_client", "cloud_server", "cli", "training", "evaluation", "pyproject.toml", "constraints.txt", "README.md",
                   "deploy/docker", "deploy"):
        assert needed not in ignored
    assert {".venv", ".git"} <= ignored
