"""train.py --mlflow against a real local MLflow store, read back with MLflow's client."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import MINILM, REPO, redis_db_url

mlflow = pytest.importorskip("mlflow", reason="the mlflow extra is part of the test install")


def test_train_logs_params_metrics_plots_and_plain_head_files(tmp_path: Path) -> None:
    store = tmp_path / "mlruns"
    out = tmp_path / "run"
    command = [
        sys.executable,
        "classifier/train.py",
        "--data",
        str(REPO / "data" / "demo_support.csv"),
        "--model",
        MINILM,
        "--redis-url",
        redis_db_url(12),
        "--models-dir",
        str(tmp_path / "models"),
        "--name",
        "support",
        "--out",
        str(out),
        "--mlflow",
        "--mlflow-dir",
        str(store),
        "--mlflow-experiment",
        "tests",
    ]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    written = json.loads((out / "metrics.json").read_text())
    run_id = result.stdout.split("mlflow run ")[1].split()[0]

    client = mlflow.MlflowClient(f"sqlite:///{store / 'mlflow.db'}")
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["head"] == "support"
    assert run.data.params["head"] == written["params"]["head"]
    assert run.data.metrics["accuracy"] == pytest.approx(written["accuracy"])
    assert "per_class.billing.f1" in run.data.metrics

    def files(path: str = "") -> list[str]:
        found = []
        for entry in client.list_artifacts(run_id, path):
            found += files(entry.path) if entry.is_dir else [entry.path]
        return found

    logged = files()
    assert "metrics.json" in logged
    assert {"confusion_matrix.png", "roc_curve.png"} <= set(logged)
    head_files = [path for path in logged if path.startswith("head/")]
    assert head_files, logged
    # Plain files only: no MLflow model flavour (an MLmodel file) and nothing pickled.
    assert not any(Path(path).name == "MLmodel" for path in logged)
    assert not any(path.endswith((".pkl", ".pickle", ".joblib")) for path in logged)
