# CPU image with the icmh package (edge client, file-based cloud-server, icmh CLI).
# Build from the repository root:  docker build -f deploy/docker/icmh.Dockerfile -t icmh:cpu .
# Versions come from constraints.txt. The GPU server image (CUDA runtime base, gRPC
# health check) arrives with the deployment issue.
FROM python:3.11-slim
ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1 TORCH_HOME=/cache/torch
RUN useradd --create-home --uid 10001 icmh && mkdir -p /cache/torch /data && chown -R icmh /cache /data
WORKDIR /app
COPY pyproject.toml constraints.txt README.md ./
COPY shared shared
COPY edge_client edge_client
COPY cloud_server cloud_server
COPY training training
COPY icmh icmh
RUN pip install -c constraints.txt .
USER icmh
VOLUME ["/cache/torch", "/data"]
ENTRYPOINT ["icmh"]
CMD ["--help"]
