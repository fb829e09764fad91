# syntax=docker/dockerfile:1
# The mesh's image: one entry point (`mesh`) for every process (router, pod, puller,
# controller). Two variants, as build targets:
#
#   docker build --target cpu  -t ghcr.io/mesh-serving/mesh:cpu  .
#   docker build --target cuda -t ghcr.io/mesh-serving/mesh:cuda .
#
# cpu:  python:3.12-slim, mesh-serving[onnx,xgboost,torch,controller] with torch's CPU build (a plain
#       `torch` requirement would pull the multi-GB CUDA build from PyPI).
# cuda: NVIDIA's CUDA runtime with cuDNN (Ubuntu 24.04, whose python3 is 3.12),
#       mesh-serving[onnx-gpu,xgboost,torch,controller] with torch's CUDA build. onnx-gpu replaces
#       onnx: both provide the `onnxruntime` module.
# Both run as an unprivileged user (uid 10001), as the manifests in deploy/ expect.

ARG PYTHON_IMAGE=python:3.12-slim
ARG CUDA_IMAGE=nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04
ARG TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu
ARG TORCH_CUDA_INDEX=https://download.pytorch.org/whl/cu126

# --- the project's wheel ------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY mesh ./mesh
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

# --- CUDA: a virtual environment built on the runtime's own Python -----------------------
FROM ${CUDA_IMAGE} AS cuda-base
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/*

FROM cuda-base AS cuda-build
ARG TORCH_CUDA_INDEX
COPY --from=wheel /wheels /wheels
RUN python3 -m venv /opt/mesh \
    && /opt/mesh/bin/pip install --no-cache-dir --upgrade pip \
    && /opt/mesh/bin/pip install --no-cache-dir --index-url "${TORCH_CUDA_INDEX}" torch \
    && /opt/mesh/bin/pip install --no-cache-dir "$(ls /wheels/mesh_serving-*.whl)[onnx-gpu,xgboost,torch,controller]"

FROM cuda-base AS cuda
COPY --from=cuda-build /opt/mesh /opt/mesh
RUN groupadd --system --gid 10001 mesh \
    && useradd --system --uid 10001 --gid mesh --create-home --home-dir /home/mesh mesh
ENV PATH=/opt/mesh/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
USER 10001
WORKDIR /home/mesh
ENTRYPOINT ["mesh"]
CMD ["--help"]

# --- CPU (last, so that a build without --target gets it) --------------------------------
FROM ${PYTHON_IMAGE} AS cpu-build
ARG TORCH_CPU_INDEX
COPY --from=wheel /wheels /wheels
RUN python -m venv /opt/mesh \
    && /opt/mesh/bin/pip install --no-cache-dir --upgrade pip \
    && /opt/mesh/bin/pip install --no-cache-dir --index-url "${TORCH_CPU_INDEX}" torch \
    && /opt/mesh/bin/pip install --no-cache-dir "$(ls /wheels/mesh_serving-*.whl)[onnx,xgboost,torch,controller]"

FROM ${PYTHON_IMAGE} AS cpu
COPY --from=cpu-build /opt/mesh /opt/mesh
RUN groupadd --system --gid 10001 mesh \
    && useradd --system --uid 10001 --gid mesh --create-home --home-dir /home/mesh mesh
ENV PATH=/opt/mesh/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
USER 10001
WORKDIR /home/mesh
ENTRYPOINT ["mesh"]
CMD ["--help"]
