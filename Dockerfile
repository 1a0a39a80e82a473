# fedsim: one image for the SuperLink (with its ServerApp) and every site's SuperNode.
#
#   docker build -t fedsim:cpu .                                   # CPU (default)
#   docker build -t fedsim:gpu --build-arg TARGET=gpu .            # CUDA base image
#
# The image holds code only: certificates, keys, HE contexts, passphrases, policies
# and data are mounted at run time (see docker-compose.yml and docs/deployment.md);
# .dockerignore keeps them out of the build context.

ARG TARGET=cpu

# ---- CPU base: slim Python, PyTorch's CPU wheels -------------------------------
FROM python:3.11-slim AS base-cpu
ENV TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu \
    PYTHON=python3.11

# ---- GPU base: NVIDIA CUDA runtime, Python 3.11 from Ubuntu, CUDA wheels -------
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu22.04 AS base-gpu
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.11 python3.11-venv \
    && rm -rf /var/lib/apt/lists/*
ENV TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 \
    PYTHON=python3.11

# ---- the image -------------------------------------------------------------------
FROM base-${TARGET} AS final
# Another PyTorch wheel index (e.g. another CUDA version): --build-arg TORCH_INDEX=URL
ARG TORCH_INDEX=""
ARG UID=10001
ARG GID=10001
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    FLWR_HOME=/fedsim/flwr-home \
    HOME=/home/fedsim

RUN ${PYTHON} -m venv ${VIRTUAL_ENV}

# torch first, from the wheel index of the target (the pin matches pyproject.toml),
# so `pip install .` below finds it satisfied instead of pulling another build.
RUN pip install --index-url "${TORCH_INDEX:-$TORCH_INDEX_URL}" "torch==2.13.0"

# The project, from the repository's own files only.
WORKDIR /opt/fedsim
COPY pyproject.toml README.md ./
COPY fedsim ./fedsim
COPY server ./server
COPY client ./client
COPY simulations ./simulations
COPY privacy ./privacy
COPY fedmodels ./fedmodels
COPY reports ./reports
COPY deploy ./deploy
RUN pip install . \
    && python -c "import fedsim.deploy.app, flwr; print('fedsim + flwr', flwr.__version__)"

# A non-root user; the folders the compose file mounts belong to it.
RUN groupadd --gid ${GID} fedsim \
    && useradd --uid ${UID} --gid ${GID} --create-home --home-dir /home/fedsim fedsim \
    && mkdir -p /fedsim/certs /fedsim/he /fedsim/runs /fedsim/state /fedsim/data \
       /fedsim/site /fedsim/enroll /fedsim/flwr-home \
    && chown -R fedsim:fedsim /fedsim
USER fedsim
WORKDIR /fedsim

# Flower's SuperLink port (Fleet, Control and Runtime APIs over HTTPS).
EXPOSE 9093
CMD ["fedsim", "--help"]
