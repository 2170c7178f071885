"""TLS, mutual TLS and bearer tokens on real cloud servers on loopback (in this process, see
:class:`support.InProcessServer`), with real ``edge-client`` processes."""

from __future__ import annotations

import json
import os
import subprocess
import time
import sys

import grpc
import pytest
from cryptography.hazmat.primitives import serialization
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from icmh.cloud import cli as server_cli
from icmh.cloud.auth import TOKENS_ENV, BearerTokenInterceptor, load_tokens
from icmh.cloud.tls import load_server_tls
from icmh.edge import cli as edge_cli
from icmh.edge.connection import load_client_security
from icmh.codec.loader import CodecOptions, open_frame_codec
from icmh.service.credentials import bearer_token
from icmh.errors import InvalidInputError
from icmh.v1 import icmh_pb2 as pb
from icmh.v1 import icmh_pb2_grpc as pb_grpc
from icmh.tasks import Task

from server_process import ROOT
from support import InProcessServer, server_config, smooth_image
from tls_certs import make_pki

TINY = ["--codec", "mbt2018-mean-tiny", "--quality", "1"]
FILE_TOKENS = ["file-token-0123456789", "file-token-abcdefghij"]
ENV_TOKENS = ["env-token-0123456789", "env-token-abcdefghij"]


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def servers(pki, tmp_path_factory):
    """A TLS server with a tokens file and a mutual-TLS server with tokens from the environment.

    Both see ``$ICMH_AUTH_TOKENS``: the tokens file takes precedence on the first (as
    ``cloud-server --auth-tokens-file`` reads them).
    """
    tokens = tmp_path_factory.mktemp("tokens") / "tokens.txt"
    tokens.write_text(f"# camera tokens\n{FILE_TOKENS[0]}\n\n  {FILE_TOKENS[1]}  \n")
    environ = {TOKENS_ENV: ",".join(ENV_TOKENS)}
    tls = load_server_tls(pki.server_cert, pki.server_key, None)
    mutual_tls = load_server_tls(pki.server_cert, pki.server_key, pki.ca)
    started = {
        "tls": InProcessServer(server_config([Task.HUMAN], tls=tls, auth_tokens=load_tokens(tokens, environ))),
        "mtls": InProcessServer(server_config([Task.HUMAN], tls=mutual_tls, auth_tokens=load_tokens(None, environ))),
    }
    yield started
    assert [server.stop() for server in started.values()] == [0, 0]


@pytest.fixture(scope="module")
def frame() -> bytes:
    codec = open_frame_codec(CodecOptions(codec="mbt2018-mean-tiny", quality=1, random_codec=True))
    return codec.encode([smooth_image(64, 96)], Task.HUMAN)[0].data


def _channel(port: int, ca=None, cert=None, key=None, server_name=None) -> grpc.Channel:
    target = f"127.0.0.1:{port}"
    if ca is None:
        return grpc.insecure_channel(target)
    credentials = grpc.ssl_channel_credentials(ca.read_bytes(), key.read_bytes() if key else None,
                                               cert.read_bytes() if cert else None)
    options = [("grpc.ssl_target_name_override", server_name)] if server_name else []
    return grpc.secure_channel(target, credentials, options=options)


def _bearer(token: str) -> tuple:
    return (("authorization", f"Bearer {token}"),)


def _processed(server) -> float:
    """Frames the server answered (any status) and frames it decoded, from its /metrics."""
    samples = server.scrape()
    return sum(value for (name, _), value in samples.items()
               if name in ("icmh_requests_total", "icmh_bitstream_bytes_count"))


def _code(call) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code()


# -- tokens -----------------------------------------------------------------------------------
def test_tokens_file_ignores_comments_and_blank_lines_and_rejects_an_empty_file(tmp_path):
    path = tmp_path / "tokens"
    path.write_text("# comment\n\n  abc-123  \nxyz\n")
    assert load_tokens(path, environ={"ICMH_AUTH_TOKENS": "ignored"}) == ["abc-123", "xyz"]
    assert load_tokens(None, environ={"ICMH_AUTH_TOKENS": "a1, b2,"}) == ["a1", "b2"]
    assert load_tokens(None, environ={}) == [] and load_tokens(None, environ={"ICMH_AUTH_TOKENS": ""}) == []
    for text in ("", "# only a comment\n\n"):
        path.write_text(text)
        with pytest.raises(InvalidInputError):
            load_tokens(path)
    with pytest.raises(InvalidInputError):
        load_tokens(None, environ={"ICMH_AUTH_TOKENS": " , "})
    path.write_text("two words\n")
    with pytest.raises(InvalidInputError, match="without spaces"):
        load_tokens(path)


def test_interceptor_accepts_exactly_the_configured_tokens():
    interceptor = BearerTokenInterceptor(["first-token", "second-token"])
    assert interceptor.accepts("first-token") and interceptor.accepts("second-token")
    assert not any(interceptor.accepts(guess) for guess in ("first-toke", "first-token2", "", "FIRST-TOKEN"))
    assert interceptor.refusal(_bearer("second-token")) is None
    assert interceptor.refusal((("authorization", "bearer second-token"),)) is None  # scheme is case-insensitive
    assert "invalid" in interceptor.refusal(_bearer("nope"))
    assert "missing" in interceptor.refusal(())
    assert "malformed" in interceptor.refusal((("authorization", "Basic Zm9vOmJhcg=="),))
    assert bearer_token("Bearer  abc ") == "abc" and bearer_token("Bearer") is None


def test_refused_calls_are_unauthenticated_and_no_frame_is_processed(servers, pki, frame):
    server = servers["tls"]
    before = _processed(server)
    with _channel(server.port, pki.ca) as channel:
        stub = pb_grpc.InferenceServiceStub(channel)
        request = pb.InferRequest(frame_id=7, bitstream=frame)
        for metadata in ((), _bearer("wrong-token"), _bearer(ENV_TOKENS[0]), (("authorization", FILE_TOKENS[0]),)):
            assert _code(lambda: stub.Infer(request, metadata=metadata, timeout=30)) == \
                grpc.StatusCode.UNAUTHENTICATED
            assert _code(lambda: list(stub.StreamInfer(iter([request] * 3), metadata=metadata, timeout=30))) == \
                grpc.StatusCode.UNAUTHENTICATED
            assert _code(lambda: stub.GetCapabilities(pb.GetCapabilitiesRequest(), metadata=metadata,
                                                      timeout=30)) == grpc.StatusCode.UNAUTHENTICATED
        assert _processed(server) == before  # nothing was decoded, queued or counted
        for token in FILE_TOKENS:
            assert stub.Infer(request, metadata=_bearer(token), timeout=60).frame_id == 7
        responses = list(stub.StreamInfer(iter([request] * 2), metadata=_bearer(FILE_TOKENS[1]), timeout=60))
        assert [r.frame_id for r in responses] == [7, 7] and not responses[0].HasField("error")
    samples = server.scrape()
    assert samples[("icmh_requests_total", (("code", "OK"), ("task", "human")))] >= 4


def test_health_and_reflection_answer_without_a_token(servers, pki):
    with _channel(servers["tls"].port, pki.ca) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        status = health.Check(health_pb2.HealthCheckRequest(service="icmh.v1.InferenceService"), timeout=30).status
        assert status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        answer = next(reflection.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                                                      timeout=30))
        assert "icmh.v1.InferenceService" in {s.name for s in answer.list_services_response.service}


# -- TLS and mutual TLS -------------------------------------------------------------------------
def test_tls_port_serves_a_client_that_trusts_its_ca_and_refuses_plaintext(servers, pki):
    port = servers["tls"].port
    with _channel(port, pki.ca) as channel:
        caps = pb_grpc.InferenceServiceStub(channel).GetCapabilities(
            pb.GetCapabilitiesRequest(), metadata=_bearer(FILE_TOKENS[0]), timeout=30)
        assert list(caps.tasks) == ["human"]
    refusals = [_channel(port), _channel(port, pki.foreign_ca),  # plaintext; a CA that did not sign the server
                _channel(port, pki.ca, server_name="not-the-server.example")]  # a name the certificate lacks
    for channel in refusals:
        with channel:
            assert _code(lambda: pb_grpc.InferenceServiceStub(channel).GetCapabilities(
                pb.GetCapabilitiesRequest(), metadata=_bearer(FILE_TOKENS[0]), timeout=30)) == \
                grpc.StatusCode.UNAVAILABLE


def test_mutual_tls_refuses_clients_without_a_certificate_of_the_trusted_ca(servers, pki):
    port = servers["mtls"].port
    with _channel(port, pki.ca, pki.client_cert, pki.client_key) as channel:
        caps = pb_grpc.InferenceServiceStub(channel).GetCapabilities(
            pb.GetCapabilitiesRequest(), metadata=_bearer(ENV_TOKENS[1]), timeout=30)
        assert list(caps.tasks) == ["human"]
    for channel in (_channel(port, pki.ca), _channel(port, pki.ca, pki.foreign_client_cert, pki.foreign_client_key)):
        with channel:
            assert _code(lambda: health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=30)) == grpc.StatusCode.UNAVAILABLE


# -- the command lines ----------------------------------------------------------------------------
def _edge(*argv: str, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "icmh.edge.cli", *argv], cwd=ROOT, capture_output=True, text=True,
                          env=dict(os.environ, ICMH_OFFLINE="1", **(env or {})), timeout=300)


def test_edge_client_with_a_wrong_token_exits_2_with_one_error_line(servers, pki, tmp_path):
    token = tmp_path / "token"
    token.write_text("not-a-valid-token\n")
    done = _edge("--demo", "--frames", "2", "--task", "human", *TINY, "--server", f"127.0.0.1:{servers['tls'].port}",
                 "--tls-ca", str(pki.ca), "--token-file", str(token))
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert lines[0].startswith("error:") and "UNAUTHENTICATED" in lines[0] and "Traceback" not in done.stderr
    assert done.stdout == ""


def test_edge_client_streams_over_mutual_tls_with_a_token_from_the_environment(servers, pki, tmp_path):
    out = tmp_path / "results.jsonl"
    done = _edge("--demo", "--frames", "2", "--task", "human", *TINY, "--random-weights", "--streams", "2",
                 "--server", f"127.0.0.1:{servers['mtls'].port}", "--tls-ca", str(pki.ca),
                 "--tls-cert", str(pki.client_cert), "--tls-key", str(pki.client_key), "--tls-server-name", "localhost",
                 "--output", str(out), env={"ICMH_TOKEN": ENV_TOKENS[1]})
    assert done.returncode == 0, done.stderr
    results = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["frame_id"] for r in results] == [0, 1] and all("result" in r for r in results)


def test_edge_client_without_a_client_certificate_reports_the_failed_handshake_at_once(servers, pki):
    """Before: a refused mutual-TLS handshake looked like "socket closed" after --connect-timeout."""
    started = time.monotonic()
    done = _edge("--demo", "--frames", "1", "--task", "human", *TINY, "--random-weights",
                 "--server", f"127.0.0.1:{servers['mtls'].port}", "--tls-ca", str(pki.ca),
                 "--tls-server-name", "localhost", "--connect-timeout", "120", env={"ICMH_TOKEN": ENV_TOKENS[1]})
    lines = [line for line in done.stderr.strip().splitlines() if not line.startswith("!!!")]
    assert done.returncode == 2 and lines[-1].startswith("error: the TLS handshake"), done.stderr
    assert time.monotonic() - started < 60  # well before the 120 s connect timeout


@pytest.mark.parametrize("argv, fragment", [
    (["--tls-cert", "/nonexistent/server.crt", "--tls-key", "/nonexistent/server.key"], "cannot read certificate"),
    (["--tls-cert", "{server_cert}"], "--tls-cert needs --tls-key"),
    (["--tls-client-ca", "{ca}"], "--tls-client-ca needs --tls-cert"),
    (["--tls-cert", "{server_cert}", "--tls-key", "{client_key}"], "does not match"),
    (["--tls-cert", "{ca}", "--tls-key", "{empty}"], "is empty"),
    (["--tls-cert", "{server_cert}", "--tls-key", "{encrypted_key}"], "is encrypted"),
    (["--tls-cert", "{server_cert}", "--tls-key", "{server_key}", "--tls-client-ca", "{server_key}"],
     "holds no PEM certificate"),
    (["--auth-tokens-file", "{empty}"], "is empty"),
    (["--auth-tokens-file", "{comments}"], "holds no token"),
], ids=["missing-file", "cert-without-key", "client-ca-without-cert", "wrong-key", "empty-key", "encrypted-key",
        "key-as-ca",
        "empty-tokens", "comment-only-tokens"])
def test_bad_server_security_options_are_one_error_line_and_exit_2(pki, tmp_path, capsys, argv, fragment):
    (tmp_path / "empty").write_text("")
    (tmp_path / "comments").write_text("# no token yet\n")
    key = serialization.load_pem_private_key(pki.server_key.read_bytes(), password=None)
    (tmp_path / "encrypted.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.BestAvailableEncryption(b"pw")))
    paths = {**{name: str(value) for name, value in vars(pki).items()}, "empty": str(tmp_path / "empty"),
             "comments": str(tmp_path / "comments"), "encrypted_key": str(tmp_path / "encrypted.key")}
    assert server_cli.main([*TINY, *(arg.format(**paths) for arg in argv)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and fragment in err[0], err


def test_bad_edge_security_options_are_one_error_line_and_exit_2(pki, tmp_path, capsys):
    two = tmp_path / "two-tokens"
    two.write_text("one\ntwo\n")
    base = ["--demo", "--frames", "1", "--task", "human", "--server", "127.0.0.1:9"]
    for argv, fragment in ((["--tls-cert", str(pki.client_cert), "--tls-key", str(pki.client_key)], "needs --tls-ca"),
                           (["--tls-ca", str(pki.ca), "--tls-cert", str(pki.client_cert)], "--tls-cert needs --tls-key"),
                           (["--tls-ca", str(pki.client_key)], "holds no PEM certificate"),
                           (["--token-file", str(two)], "holds 2 tokens")):
        assert edge_cli.main([*base, *argv]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error:") and fragment in err[0], err
    with pytest.raises(InvalidInputError, match="ICMH_TOKEN"):
        load_client_security(environ={"ICMH_TOKEN": "has space"})
