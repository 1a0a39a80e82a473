# fedsim: one image for the SuperLink (with its ServerApp and fedsim's gateway) and
# every site's SuperNode.
#
#   docker build -t fedsim:cpu .                                          # CPU (default)
#   docker build -t fedsim:gpu \
#       --build-arg BASE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu22.04 \
#       --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 .  # CUDA sites
#
# Only the base named by BASE is ever pulled (every stage below starts from it, so the
# legacy builder, which builds every stage of a file, pulls nothing else).
# The image holds code only: certificates, keys, HE contexts, passphrases, policies
# and data are mounted at run time (see docker-compose.yml and docs/deployment.md);
# .dockerignore keeps them out of the build context.

ARG BASE=python:3.11-slim

# ---- build: the virtual environment, with pip's caches and the sources ---------------
FROM ${BASE} AS build
# PyTorch's wheel index for the base (CPU by default; cu128 etc. for CUDA bases).
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
# Python 3.11 itself where the base lacks it (CUDA bases): Debian/Ubuntu packages.
RUN command -v python3.11 >/dev/null || { apt-get update \
      && apt-get install -y --no-install-recommends python3.11 python3.11-venv \
      && rm -rf /var/lib/apt/lists/*; }
RUN python3.11 -m venv /opt/venv
# torch first, from the wheel index of the base (the pin matches pyproject.toml),
# so `pip install .` below finds it satisfied instead of pulling another build.
# (--no-compile here and below: the bytecode is compiled once, in parallel, at the end
# of this stage, for what the image keeps.)
RUN pip install --no-compile --index-url "${TORCH_INDEX}" "torch==2.13.0"
# The project's dependencies, in a layer of their own (rebuilt only when
# pyproject.toml changes): installed through an empty stand-in of the project.
WORKDIR /src
COPY pyproject.toml README.md ./
RUN for pkg in fedsim fedsim/cli server server/strategies client simulations privacy \
        fedmodels reports deploy; do mkdir -p "$pkg" && touch "$pkg/__init__.py"; done \
    && touch deploy/pyproject.toml \
    && pip install --no-compile . && pip uninstall -y fedsim && rm -rf /src/*
# The project, from the repository's own files only.
COPY pyproject.toml README.md ./
COPY fedsim ./fedsim
COPY server ./server
COPY client ./client
COPY simulations ./simulations
COPY privacy ./privacy
COPY fedmodels ./fedmodels
COPY reports ./reports
COPY deploy ./deploy
# -P: import the installed package, not the source folder in the working directory.
RUN pip install --no-compile --no-deps . \
    && python -P -c "import fedsim.deploy.app, fedsim.deploy.gateway, fedsim.deploy.superlink, flwr; \
from fedsim.deploy.control import app_folder; app_folder(); \
print('fedsim + flwr', flwr.__version__)"
# What a deployment never runs, left out of the image (about 0.6 GB): Ray and the
# Hugging Face dataset stack (simulations only: `fedsim run` is not for the image),
# the test suites, C++ headers and test programs the wheels ship, pip itself.
RUN pip uninstall -y ray datasets pyarrow flwr-datasets \
    && site=/opt/venv/lib/python3.11/site-packages \
    && rm -rf "$site"/torch/include "$site"/torch/test \
    && find "$site"/torch/bin -type f ! -name torch_shm_manager -delete \
    && for pkg in numpy scipy pandas sklearn matplotlib sympy networkx; do \
         find "$site/$pkg" -depth -type d -name tests -exec rm -rf {} +; done \
    && python -P -c "import fedsim.deploy.app, fedsim.cli.main, torch, opacus, tenseal" \
    && pip uninstall -y pip setuptools wheel \
    && { python -m compileall -q -j 0 "$site" >/dev/null || true; }

# ---- the image: the base, the virtual environment, a non-root user -----------------
FROM ${BASE} AS final
RUN command -v python3.11 >/dev/null || { apt-get update \
      && apt-get install -y --no-install-recommends python3.11 python3.11-venv \
      && rm -rf /var/lib/apt/lists/*; }
ARG UID=10001
ARG GID=10001
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    FLWR_HOME=/fedsim/flwr-home \
    HOME=/home/fedsim
COPY --from=build /opt/venv /opt/venv
# A non-root user; the folders the compose file mounts belong to it.
RUN groupadd --gid ${GID} fedsim \
    && useradd --uid ${UID} --gid ${GID} --create-home --home-dir /home/fedsim fedsim \
    && mkdir -p /fedsim/certs /fedsim/he /fedsim/runs /fedsim/state /fedsim/data \
       /fedsim/site /fedsim/enroll /fedsim/flwr-home \
    && chown -R fedsim:fedsim /fedsim
USER fedsim
WORKDIR /fedsim

# fedsim's gateway in front of the SuperLink: 9093 the Fleet API (sites),
# 9095 the Control API (the operator's host only; see docker-compose.yml).
EXPOSE 9093 9095
CMD ["fedsim", "--help"]
