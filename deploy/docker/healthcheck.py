#!/usr/bin/env python3
"""Ask a cloud-server's standard gRPC health service whether it is SERVING.

Installed in the cloud-server image as ``icmh-healthcheck`` and used by its Docker
HEALTHCHECK; Kubernetes uses its native ``grpc`` probe instead, except where the server
speaks TLS (the kubelet's gRPC probe is plaintext only): then the ``tls`` kustomize
component runs this script as an exec probe with ``--tls-ca``.

Exit status: 0 SERVING; 1 anything else (NOT_SERVING while draining, unreachable,
timeout, TLS failure), with one line on stderr saying which. Uses only packages the
image already has (grpcio, grpcio-health-checking).
"""

from __future__ import annotations

import argparse
import os
import sys


def build_parser() -> argparse.ArgumentParser:
    """The ``icmh-healthcheck`` argument parser (every flag also has an environment default)."""
    env = os.environ.get
    parser = argparse.ArgumentParser(prog="icmh-healthcheck", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default=env("ICMH_HEALTH_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(env("ICMH_GRPC_PORT", "50051")))
    parser.add_argument("--service", default="", help="health service name ('' = the whole server)")
    parser.add_argument("--timeout", type=float, default=float(env("ICMH_HEALTH_TIMEOUT", "4")))
    parser.add_argument("--tls-ca", default=env("ICMH_HEALTH_TLS_CA"),
                        help="PEM CA bundle: connect with TLS and verify the server against it")
    parser.add_argument("--tls-cert", default=env("ICMH_HEALTH_TLS_CERT"), help="client certificate (mTLS)")
    parser.add_argument("--tls-key", default=env("ICMH_HEALTH_TLS_KEY"), help="client key (mTLS)")
    parser.add_argument("--server-name", default=env("ICMH_HEALTH_SERVER_NAME"),
                        help="name to verify in the server certificate (default: --host)")
    return parser


def _read(path):
    with open(path, "rb") as handle:
        return handle.read()


def check(args: argparse.Namespace) -> int:
    """Return 0 when the server answers SERVING within ``args.timeout`` seconds, else 1."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    target = f"{args.host}:{args.port}"
    if args.tls_ca:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=_read(args.tls_ca),
            private_key=_read(args.tls_key) if args.tls_key else None,
            certificate_chain=_read(args.tls_cert) if args.tls_cert else None)
        options = [("grpc.ssl_target_name_override", args.server_name)] if args.server_name else []
        channel = grpc.secure_channel(target, credentials, options=options)
    else:
        channel = grpc.insecure_channel(target)
    try:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout)
    except grpc.RpcError as exc:
        print(f"icmh-healthcheck: {target}: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    finally:
        channel.close()
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    if reply.status != health_pb2.HealthCheckResponse.SERVING:
        print(f"icmh-healthcheck: {target}: {status}", file=sys.stderr)
        return 1
    return 0


def main(argv=None) -> int:
    """Entry point: parse the flags, check once, return the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return check(args)
    except OSError as exc:   # unreadable certificate files
        print(f"icmh-healthcheck: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
