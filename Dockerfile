# syntax=docker/dockerfile:1
#
# bids_rim as a BIDS App image.
#
#   docker build -t bids_rim:0.1.0 .                                  # CPU PyTorch (default)
#   docker build --build-arg TORCH_VARIANT=cu128 -t bids_rim:0.1.0-cuda .   # a CUDA build
#   docker run --rm -v /data:/data:ro -v /out:/out bids_rim:0.1.0 /data /out participant
#
# Stages: `runtime-base` (Python, user, environment), `deps` (PyTorch, then the other
# dependencies, each its own layer), `templates` (TemplateFlow files fetched at build time),
# `wheel` (the package built from the source tree) and the final image, which adds the
# templates and the package on top of `deps`. The slow-changing steps come first, so editing
# the code rebuilds only the last layer. See docs/containers.md.
#
# No apt packages are installed: the compiled libraries of every wheel bids_rim uses need only
# glibc, libgcc, libstdc++ and zlib (checked with ldd), which the slim image already has.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS runtime-base
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    TEMPLATEFLOW_HOME=/opt/templateflow \
    TEMPLATEFLOW_AUTOUPDATE=0 \
    NIPYPE_NO_ET=1 \
    BIDS_RIM_DOCKER=1
# A fixed, unprivileged user; Apptainer runs as the calling user instead, so everything the app
# reads from the image is world-readable.
RUN groupadd --gid 1000 bids_rim \
    && useradd --uid 1000 --gid bids_rim --create-home --shell /bin/bash bids_rim \
    && python -m venv /opt/venv

FROM runtime-base AS deps
# PyTorch, pinned as in the README (`pip install torch==2.13.0 ...`); the CPU wheel by default,
# `--build-arg TORCH_VARIANT=cu128` (or another tag of download.pytorch.org/whl/) for CUDA.
ARG TORCH_VERSION=2.13.0
ARG TORCH_VARIANT=cpu
RUN pip install --index-url "https://download.pytorch.org/whl/${TORCH_VARIANT}" "torch==${TORCH_VERSION}"
# Every other run-time dependency, read from pyproject.toml, in a layer of its own; the torch
# requirement in it is already satisfied, so pip keeps the build installed above.
COPY pyproject.toml scripts/runtime_requirements.py /tmp/deps/
RUN python /tmp/deps/runtime_requirements.py /tmp/deps/pyproject.toml > /tmp/deps/requirements.txt \
    && pip install --requirement /tmp/deps/requirements.txt \
    && rm -rf /tmp/deps

FROM deps AS templates
# The templates the app uses, so that it never downloads at run time (TEMPLATEFLOW_AUTOUPDATE=0).
ARG TEMPLATE_SPACES=MNI152NLin2009cAsym
COPY scripts/fetch_templates.py /tmp/fetch_templates.py
# TEMPLATE_SPACES is a space-separated list: one argument per word is what is wanted.
# hadolint ignore=SC2086
RUN python /tmp/fetch_templates.py ${TEMPLATE_SPACES} \
    && chmod -R a+rX "${TEMPLATEFLOW_HOME}"

FROM deps AS wheel
COPY pyproject.toml README.md /src/
COPY bids_rim /src/bids_rim
RUN pip wheel --no-deps --wheel-dir /wheels /src

FROM deps
# The version is kept equal to pyproject.toml's by tests/test_containers.py.
LABEL org.opencontainers.image.title="bids_rim" \
      org.opencontainers.image.description="BIDS App that finds paramagnetic rim lesions of multiple sclerosis in QSM and FLAIR" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.source="https://github.com/bids-rim/bids_rim" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=templates /opt/templateflow /opt/templateflow
# The package (its dependencies are the layer above; `pip check` proves none is missing), with
# the bundled models as package data. The build stops here if one did not come along.
RUN --mount=type=bind,from=wheel,source=/wheels,target=/tmp/wheels \
    pip install --no-deps /tmp/wheels/bids_rim-*.whl \
    && pip check \
    && python -c "from bids_rim.workflows.participant import BUNDLED_MODELS, bundled_model_path as p; missing = [str(p(o)) for o in BUNDLED_MODELS if not p(o).is_file()]; assert not missing, f'{missing}: bundled model missing from the package'" \
    && bids_rim --version
USER 1000:1000
WORKDIR /home/bids_rim
ENTRYPOINT ["bids_rim"]
