#!/bin/sh
# Shared by cloud-server.Dockerfile and edge-client.Dockerfile (one copy of the install
# steps, not two): a virtual environment in $VIRTUAL_ENV with the project's runtime
# dependencies at the exact versions of constraints.txt, and the non-root user "icmh".
#
# Runs in the build context's /app with pyproject.toml and constraints.txt copied in.
# TORCH_INDEX (build arg): empty = PyPI, whose Linux torch wheels are CUDA builds (they
# bring the CUDA 13 runtime and cuDNN as nvidia-* wheels, pinned in constraints.txt);
# https://download.pytorch.org/whl/cpu = CPU-only wheels (torch==X matches X+cpu),
# about 5 GB smaller, for the edge image and the CPU server.
set -eu

# CUDA base images (Ubuntu 24.04) have no Python: use the distribution's python3 (3.12,
# inside requires-python). python:*-slim images already have one.
if ! command -v python3 >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3 python3-venv
    rm -rf /var/lib/apt/lists/*
fi
python3 -m venv "$VIRTUAL_ENV"
"$VIRTUAL_ENV/bin/pip" install --quiet --upgrade "pip>=24"

# Dependencies only (from pyproject.toml, no project source yet), so that this layer is
# rebuilt when the pins change, not on every code change: the core plus the extras of the
# image's role (EXTRAS build arg: "server" for the cloud server, "edge" for the edge client).
EXTRAS="${EXTRAS:-}" python3 - <<'PY' > /tmp/requirements.txt
import os, re, tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
extras, wanted, seen = project["optional-dependencies"], os.environ["EXTRAS"].split(), []
while wanted:  # expand "icmh[a,b]" self-references
    extra = wanted.pop()
    for requirement in extras[extra]:
        nested = re.fullmatch(r"icmh\[(.+)\]", requirement)
        wanted += nested.group(1).split(",") if nested else []
        seen += [] if nested else [requirement]
print("\n".join(project["dependencies"] + seen))
PY
if [ -n "${TORCH_INDEX:-}" ]; then
    set -- --index-url "$TORCH_INDEX" --extra-index-url https://pypi.org/simple
fi
"$VIRTUAL_ENV/bin/pip" install --quiet "$@" -c constraints.txt -r /tmp/requirements.txt
rm /tmp/requirements.txt

# Fixed uid/gid so that volumes and Kubernetes' runAsUser / fsGroup agree with the image.
groupadd --system --gid 10001 icmh
useradd --system --uid 10001 --gid icmh --home-dir /home/icmh --create-home --shell /usr/sbin/nologin icmh
mkdir -p "$TORCH_HOME" /adapters /models /data
chown -R icmh:icmh "$TORCH_HOME" /adapters /models /data
