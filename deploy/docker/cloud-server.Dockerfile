# syntax=docker/dockerfile:1
# The cloud server: grpc.aio inference service + Prometheus metrics.
#
#   GPU (default; the host needs the NVIDIA driver >= 580 for CUDA 13 and the NVIDIA Container Toolkit):
#     docker build -f deploy/docker/cloud-server.Dockerfile -t icmh/cloud-server:0.1.0-cuda .
#   CPU (same file, two build args; what `docker compose --profile cpu` builds):
#     docker build -f deploy/docker/cloud-server.Dockerfile -t icmh/cloud-server:0.1.0-cpu \
#       --build-arg BASE_IMAGE=python:3.11-slim-bookworm --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cpu .
#
# Why the CUDA *base* flavour and not cudnn-runtime: the PyPI torch wheels pinned in
# constraints.txt carry their own CUDA 13 runtime, cuBLAS and cuDNN (nvidia-* wheels), so
# the image needs from NVIDIA only what "base" has: the driver-compatibility libraries and
# the NVIDIA_* variables the container toolkit reads. A cudnn-runtime base would add a
# second, unused copy of the CUDA libraries (several GB).
ARG BASE_IMAGE=nvidia/cuda:13.0.0-base-ubuntu24.04
FROM ${BASE_IMAGE}

ARG TORCH_INDEX=""
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/icmh \
    PATH=/opt/icmh/bin:$PATH \
    TORCH_HOME=/cache/torch \
    ICMH_MODELS_DIR=/models \
    ICMH_GRPC_PORT=50051

WORKDIR /app
COPY pyproject.toml constraints.txt ./
COPY --chmod=0755 deploy/docker/install-python-deps.sh /usr/local/bin/
RUN TORCH_INDEX="$TORCH_INDEX" EXTRAS="server" install-python-deps.sh

# The project itself (the build context minus .dockerignore), on top of the cached
# dependency layer: a code change rebuilds only from here.
COPY . .
RUN pip install --quiet --no-deps . && rm -rf ./build ./*.egg-info
COPY --chmod=0755 deploy/docker/healthcheck.py /usr/local/bin/icmh-healthcheck

USER 10001:10001
# The project's own codec and adapters are in the package. The real task models are read
# from ICMH_MODELS_DIR (/models: mount ../shared/models there). The torch hub cache: the
# paper's models (CompressAI zoo, torchvision) are downloaded here on first use; mount a
# volume so that happens once, or pre-fill it ($TORCH_HOME/hub/checkpoints/<file>).
# More adapter checkpoints: /adapters.
VOLUME ["/cache/torch"]
# 50051 gRPC (icmh.v1.InferenceService, grpc.health.v1, reflection); 9100 Prometheus /metrics.
EXPOSE 50051 9100
# The standard gRPC health service, plaintext on loopback. start-period: the first start
# may download ~0.5 GB of weights before the port opens. (With --tls-cert, set
# ICMH_HEALTH_TLS_CA / ICMH_HEALTH_SERVER_NAME so the check speaks TLS.)
HEALTHCHECK --interval=15s --timeout=6s --start-period=600s --retries=3 CMD ["icmh-healthcheck"]
# SIGTERM (docker stop, Kubernetes): health goes NOT_SERVING, in-flight frames get --grace
# seconds, exit 0. Give the container longer than --grace to stop (compose stop_grace_period).
STOPSIGNAL SIGTERM
ENTRYPOINT ["cloud-server"]
# --host 0.0.0.0 inside the container's own network namespace; publish the port on the
# host's loopback only, or turn on TLS and tokens (--tls-cert/--tls-key, --auth-tokens-file).
CMD ["--host", "0.0.0.0", "--port", "50051", "--metrics-port", "9100", "--adapters", "/adapters"]
