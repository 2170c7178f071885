"""Kubernetes manifests (deploy/k8s): every kustomization builds with the real kubectl, and
the built objects say what the deployment design needs (GPU request, native gRPC probes,
headless Service, HPA on the pending-requests metric, PDB, graceful drain, secrets).

Skips only where ``kubectl`` is absent; ``kubectl kustomize`` needs no cluster.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Dict, List

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s"
KUBECTL = shutil.which("kubectl")

pytestmark = pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed: cannot build the kustomizations")

# cloud-server flags that the manifests use and that the TLS/token/connection-age work adds
# to cloud_server/cli.py; until it is there, these may be unknown to the parser, nothing else.
def build(path: Path) -> List[dict]:
    """``kubectl kustomize path``, parsed: the list of objects."""
    done = subprocess.run([KUBECTL, "kustomize", str(path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"kubectl kustomize {path} failed:\n{done.stderr}"
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def by_kind(objects: List[dict]) -> Dict[str, List[dict]]:
    kinds: Dict[str, List[dict]] = {}
    for obj in objects:
        kinds.setdefault(obj["kind"], []).append(obj)
    return kinds


def one(objects: List[dict], kind: str, name: str) -> dict:
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"].startswith(name)]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def server_container(objects: List[dict]) -> dict:
    deployment = one(objects, "Deployment", "cloud-server")
    return next(c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "cloud-server")


def flag_value(args: List[str], flag: str) -> str:
    values = [a.split("=", 1)[1] for a in args if a.startswith(flag + "=")]
    assert len(values) == 1, f"{flag} given {len(values)} times in {args}"
    return values[0]


@pytest.fixture(scope="module")
def base() -> List[dict]:
    return build(K8S)


def test_every_kustomization_builds():
    roots = sorted(p.parent for p in K8S.rglob("kustomization.yaml")
                   if yaml.safe_load(p.read_text())["kind"] == "Kustomization")
    assert {K8S, K8S / "base", K8S / "overlays" / "production", K8S / "overlays" / "envoy",
            K8S / "prometheus-adapter"} <= set(roots)
    for root in roots:
        assert build(root), f"{root} built nothing"


def test_each_component_builds_on_the_base_alone(tmp_path):
    components = sorted(p.parent for p in K8S.rglob("kustomization.yaml")
                        if yaml.safe_load(p.read_text())["kind"] == "Component")
    assert {c.name for c in components} >= {"envoy", "tls"}
    for component in components:
        overlay = tmp_path / component.name
        overlay.mkdir()
        (overlay / "kustomization.yaml").write_text(yaml.safe_dump({
            "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
            # kustomize takes relative paths only
            "resources": [os.path.relpath(K8S / "base", overlay)],
            "components": [os.path.relpath(component, overlay)]}))
        objects = build(overlay)
        assert one(objects, "Deployment", "cloud-server")


def test_base_runs_one_server_per_gpu_with_native_grpc_probes(base):
    kinds = by_kind(base)
    assert {"Namespace", "Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "Secret"} <= set(kinds)
    assert all(o["metadata"].get("namespace") == "icmh" for o in base if o["kind"] != "Namespace")
    container = server_container(base)
    resources = container["resources"]
    assert str(resources["limits"]["nvidia.com/gpu"]) == "1" and str(resources["requests"]["nvidia.com/gpu"]) == "1"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": 50051, "metrics": 9100}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == ports["grpc"], probe
        assert "exec" not in container[probe] and "httpGet" not in container[probe]
    args = container["args"]
    assert flag_value(args, "--port") == "50051" and flag_value(args, "--metrics-port") == "9100"
    assert flag_value(args, "--device") == "cuda" and flag_value(args, "--host") == "0.0.0.0"
    assert float(flag_value(args, "--max-connection-age")) > 0
    template = one(base, "Deployment", "cloud-server")["spec"]["template"]
    annotations = template["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true" and annotations["prometheus.io/port"] == "9100"
    assert template["spec"]["securityContext"]["runAsNonRoot"] is True


def test_pods_get_longer_to_stop_than_the_server_drains(base):
    container = server_container(base)
    spec = one(base, "Deployment", "cloud-server")["spec"]["template"]["spec"]
    grace = float(flag_value(container["args"], "--grace"))
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    pre_stop_seconds = float(pre_stop[1]) if pre_stop[0] == "sleep" else 0.0
    assert spec["terminationGracePeriodSeconds"] > grace + pre_stop_seconds


def test_server_args_are_flags_cloud_server_accepts(base):
    from icmh.cloud.cli import build_parser

    args = server_container(base)["args"]
    _, unknown = build_parser().parse_known_args(args)
    assert unknown == []


def test_service_is_headless_for_client_side_round_robin(base):
    service = one(base, "Service", "cloud-server")
    assert service["spec"]["clusterIP"] == "None"
    deployment = one(base, "Deployment", "cloud-server")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert all(labels.get(k) == v for k, v in service["spec"]["selector"].items())
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]}["grpc"] == 50051


def test_hpa_scales_the_deployment_on_pending_requests_from_the_adapter(base):
    hpa = one(base, "HorizontalPodAutoscaler", "cloud-server")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "cloud-server"}
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods" and metric["pods"]["metric"]["name"] == "icmh_pending_requests"
    assert metric["pods"]["target"]["type"] == "AverageValue"
    assert 1 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
    assert "replicas" not in one(base, "Deployment", "cloud-server")["spec"]   # the HPA owns it
    # the adapter rule serves exactly that metric, from the pods' own series
    (config_map,) = build(K8S / "prometheus-adapter")
    (rule,) = yaml.safe_load(config_map["data"]["config.yaml"])["rules"]
    assert rule["name"]["as"] == "icmh_pending_requests"
    assert rule["seriesQuery"].startswith("icmh_pending_requests{")
    assert rule["resources"]["overrides"]["pod"] == {"resource": "pod"}


def test_pdb_covers_the_server_pods(base):
    pdb = one(base, "PodDisruptionBudget", "cloud-server")
    assert pdb["apiVersion"] == "policy/v1" and pdb["spec"]["maxUnavailable"] == 1
    labels = one(base, "Deployment", "cloud-server")["spec"]["template"]["metadata"]["labels"]
    assert all(labels.get(k) == v for k, v in pdb["spec"]["selector"]["matchLabels"].items())


def test_auth_token_placeholder_is_mounted_and_holds_no_usable_token(base):
    container = server_container(base)
    secret = one(base, "Secret", "icmh-auth-tokens")
    tokens_path = flag_value(container["args"], "--auth-tokens-file")
    mount = next(m for m in container["volumeMounts"] if tokens_path.startswith(m["mountPath"] + "/"))
    volume = next(v for v in one(base, "Deployment", "cloud-server")["spec"]["template"]["spec"]["volumes"]
                  if v["name"] == mount["name"])
    assert volume["secret"]["secretName"] == secret["metadata"]["name"]
    key = tokens_path[len(mount["mountPath"]) + 1:]
    lines = [line.strip() for line in secret["stringData"][key].splitlines()]
    # only comments: the server refuses to start until real tokens replace it
    assert lines and all(not line or line.startswith("#") for line in lines)


def test_tls_overlay_mounts_the_certificate_and_probes_with_tls(base):
    objects = build(K8S / "overlays" / "production")
    container = server_container(objects)
    secret = one(objects, "Secret", "icmh-tls")
    assert secret["type"] == "kubernetes.io/tls" and "REPLACE ME" in secret["stringData"]["tls.crt"]
    cert = flag_value(container["args"], "--tls-cert")
    assert flag_value(container["args"], "--tls-key").rsplit("/", 1)[0] == cert.rsplit("/", 1)[0]
    assert any(cert.startswith(m["mountPath"] + "/") for m in container["volumeMounts"])
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["ICMH_HEALTH_TLS_CA"].startswith(cert.rsplit("/", 1)[0] + "/")
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["exec"]["command"] == ["icmh-healthcheck"] and "grpc" not in container[probe]
    # the base's own objects are all still there
    assert {(o["kind"], o["metadata"]["name"]) for o in base} <= {(o["kind"], o["metadata"]["name"]) for o in objects}


def test_envoy_overlay_balances_grpc_over_the_headless_service():
    objects = build(K8S / "overlays" / "envoy")
    envoy = one(objects, "Deployment", "envoy")
    config_map = one(objects, "ConfigMap", "envoy-config")
    volume = next(v for v in envoy["spec"]["template"]["spec"]["volumes"] if "configMap" in v)
    assert volume["configMap"]["name"] == config_map["metadata"]["name"]   # the hashed name is wired in
    config = yaml.safe_load(config_map["data"]["envoy.yaml"])
    (cluster,) = config["static_resources"]["clusters"]
    assert cluster["type"] == "STRICT_DNS" and "grpc_health_check" in cluster["health_checks"][0]
    address = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]
    assert address["address"].startswith("cloud-server.icmh.svc") and address["port_value"] == 50051
    assert "http2_protocol_options" in str(cluster["typed_extension_protocol_options"])
    lb = one(objects, "Service", "cloud-server-lb")
    assert lb["spec"].get("clusterIP") != "None" and lb["spec"]["ports"][0]["port"] == 50051
    image = envoy["spec"]["template"]["spec"]["containers"][0]["image"]
    assert ":" in image and not image.endswith(":latest")
