# The image the CI jobs run in (build-ds-image rebuilds it when this file or requirements.txt
# changes). One image serves the CPU and the GPU jobs: xgboost 3's wheel carries its CUDA code,
# the base adds the CUDA runtime. CUDA 12.2 needs an NVIDIA driver >= 535 on the GPU runner
# (12.x minor-version compatibility); pick another 12.x runtime tag with --build-arg CUDA_IMAGE=...
ARG CUDA_IMAGE=nvidia/cuda:12.2.2-runtime-ubuntu22.04
ARG UV_IMAGE=ghcr.io/astral-sh/uv:0.13.9

FROM ${UV_IMAGE} AS uv

FROM ${CUDA_IMAGE}

ARG PYTHON_VERSION=3.11
ENV DEBIAN_FRONTEND=noninteractive \
    LANG=C.UTF-8 \
    UV_PYTHON_INSTALL_DIR=/opt/python \
    UV_PYTHON_DOWNLOADS=never \
    UV_LINK_MODE=copy \
    UV_COMPILE_BYTECODE=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    MLFLOW_DISABLE_TELEMETRY=true \
    NBGATE_IMAGE=1

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# Ubuntu's package versions move with security updates, so pinning them would only break
# rebuilds; requirements.txt pins everything the results depend on.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates git libgomp1 make \
    && rm -rf /var/lib/apt/lists/*

COPY --from=uv /uv /usr/local/bin/uv

# A non-root user owns the venv, so a CI job can bring it up to date with a newer lock
# (see .gitlab-ci.yml) without root. The UID avoids Ubuntu images' own user 1000.
RUN groupadd --gid 10001 nbgate \
    && useradd --create-home --uid 10001 --gid 10001 --shell /bin/bash nbgate \
    && install -d -o nbgate -g nbgate /opt/python /opt/venv /opt/src

USER 10001:10001
WORKDIR /opt/src

# uv's standalone CPython: the exact minor version the lock was compiled for, which Ubuntu's
# own python3 is not.
RUN UV_PYTHON_DOWNLOADS=automatic uv python install "$PYTHON_VERSION" \
    && uv venv --python "$PYTHON_VERSION" "$VIRTUAL_ENV"

# The heavy layer changes only with the lock; its hash lets a job notice an image built from
# an older lock (the fallback tag) and sync the difference.
COPY --chown=nbgate:nbgate requirements.txt ./
RUN uv pip install --no-cache -r requirements.txt \
    && sha256sum requirements.txt | cut -d' ' -f1 > "$VIRTUAL_ENV/.requirements.sha256"

COPY --chown=nbgate:nbgate pyproject.toml README.md ./
COPY --chown=nbgate:nbgate nbgate ./nbgate
COPY --chown=nbgate:nbgate reporting ./reporting
RUN uv pip install --no-cache --no-deps . \
    && rm -rf /opt/src/*

WORKDIR /home/nbgate
CMD ["bash"]
