# syntax=docker/dockerfile:1
# The edge client on a small CPU image (python slim + CPU-only torch wheels).
#   docker build -f deploy/docker/edge-client.Dockerfile -t icmh/edge-client:0.1.0 .
#   docker run --rm icmh/edge-client:0.1.0 --demo --task human --server HOST:50051
# A camera: add --device /dev/video0 to `docker run` and pass --camera 0. The image also
# has the `icmh` command (docker run --entrypoint icmh ...).
# The install steps are shared with cloud-server.Dockerfile (install-python-deps.sh).
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}

ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/icmh \
    PATH=/opt/icmh/bin:$PATH \
    TORCH_HOME=/cache/torch

WORKDIR /app
COPY pyproject.toml constraints.txt ./
COPY --chmod=0755 deploy/docker/install-python-deps.sh /usr/local/bin/
RUN TORCH_INDEX="$TORCH_INDEX" EXTRAS="edge" install-python-deps.sh

# The project itself (the build context minus .dockerignore), on top of the cached
# dependency layer: a code change rebuilds only from here.
COPY . .
RUN pip install --quiet --no-deps . && rm -rf ./build ./*.egg-info

USER 10001:10001
VOLUME ["/cache/torch"]
# 9101: Prometheus /metrics when run with --metrics-port 9101
EXPOSE 9101
ENTRYPOINT ["edge-client"]
CMD ["--help"]
