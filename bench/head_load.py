"""Load time of a saved head: the safetensors format against the old joblib pickle, same run.

    python bench/head_load.py [--runs 5]

Cold: a fresh `python -c` that imports what loading needs, loads one head and predicts 8
rows (what a starting replica pays per process), median of --runs. Warm: load_head in a
running process, median of 50, from a folder and from a Redis store (a private
redis-server). The joblib baseline unpickles the same estimator, as the old format did.
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import joblib
import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.common import free_port  # noqa: E402
from classifier.artifacts import load_head, save_head  # noqa: E402
from classifier.stores.redis_store import RedisStore  # noqa: E402
from classifier.training import train_head  # noqa: E402

NEW = """
import sys, numpy as np
from classifier.artifacts import load_head
load_head(sys.argv[1], sys.argv[2]).predict_proba(np.zeros((8, int(sys.argv[3])), np.float32))
"""
OLD = """
import sys, joblib, numpy as np
joblib.load(sys.argv[1])["estimator"].predict_proba(np.zeros((8, int(sys.argv[2])), np.float32))
"""


def cold(arguments: list[str], runs: int) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", *arguments], cwd=REPO, check=True)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def warm(load, runs: int = 50) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        load()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    arguments = parser.parse_args()
    dim = 768
    X = np.random.default_rng(0).normal(size=(2000, dim)).astype(np.float32)
    y = [("a", "b", "c", "d")[i] for i in np.digitize(X[:, 0], [-0.6, 0, 0.6])]
    root = Path(tempfile.mkdtemp())
    redis_server = subprocess.Popen(
        ["redis-server", "--port", str(port := free_port()), "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    time.sleep(0.5)
    store = RedisStore(f"redis://127.0.0.1:{port}/0")
    results = {}
    try:
        for head in ("logreg", "mlp"):
            trained = train_head(X, y, head=head, test_size=0, max_epochs=3)
            encoder = {"fingerprint": "bench", "dim": dim}
            save_head(trained, root, head, encoder)
            save_head(trained, store, head, encoder)
            pickled = root / f"{head}.joblib"
            joblib.dump({"estimator": trained.estimator, "format": 1}, pickled)
            artifact = (root / head / "v1.safetensors").stat().st_size
            new_cold = cold([NEW, str(root), head, str(dim)], arguments.runs)
            old_cold = cold([OLD, str(pickled), str(dim)], arguments.runs)
            results[head] = {
                "artifact_bytes": artifact,
                "cold_new_s": round(new_cold, 3),
                "cold_joblib_s": round(old_cold, 3),
                "cold_ratio_joblib_over_new": round(old_cold / new_cold, 2),
                "warm_folder_ms": round(1000 * warm(lambda h=head: load_head(root, h)), 3),
                "warm_redis_ms": round(1000 * warm(lambda h=head: load_head(store, h)), 3),
                "warm_joblib_ms": round(
                    1000 * warm(lambda p=pickled: joblib.load(p)["estimator"]), 3
                ),
            }
    finally:
        store.close()
        redis_server.kill()
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
