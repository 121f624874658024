import csv
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from conftest import DATASETS, MINILM, redis_db_url, run_train_cli

from classifier import headfile, load_head
from classifier.train import main

needs_datasets = pytest.mark.skipif(
    not DATASETS.is_dir(), reason=f"the shared datasets are not at {DATASETS}"
)


@pytest.fixture(autouse=True)
def cli_redis() -> Iterator[str]:
    client = redis.Redis.from_url(redis_db_url(14))
    client.flushdb()
    yield redis_db_url(14)
    client.flushdb()
    client.close()


def write_slice(source: Path, target: Path, rows: int, columns: list[str] | None = None) -> None:
    with open(source, encoding="utf-8", newline="") as handle:
        data = list(csv.DictReader(handle))[:rows]
    columns = columns or list(data[0])
    with open(target, "w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(data)


def run_cli(*arguments: str) -> subprocess.CompletedProcess:
    return run_train_cli(14, *arguments)


@needs_datasets
def test_end_to_end_train_save_load_and_cached_rerun(tmp_path, minilm):
    train, test = tmp_path / "train.csv", tmp_path / "test.csv"
    write_slice(DATASETS / "hate_speech" / "train.csv", train, 200)
    write_slice(DATASETS / "hate_speech" / "test.csv", test, 100)
    models, out = tmp_path / "models", tmp_path / "run"
    first = run_cli(
        "--data",
        str(train),
        "--test",
        str(test),
        "--name",
        "hate",
        "--models-dir",
        str(models),
        "--out",
        str(out),
    )
    assert first.returncode == 0, first.stderr
    assert "encoding" in first.stderr  # the progress bar while encoding misses
    metrics = json.loads((out / "metrics.json").read_text())
    for key in (
        "accuracy",
        "macro_f1",
        "weighted_f1",
        "roc_auc",
        "pr_auc",
        "per_class",
        "confusion_matrix",
        "fit_seconds",
    ):
        assert key in metrics
    assert metrics["n_rows"] == 100 and metrics["accuracy"] > 0.6  # balanced: chance is 0.5
    assert metrics["embedding"]["cached"] == 0
    for plot in ("confusion_matrix.png", "roc_curve.png", "pr_curve.png", "per_class_f1.png"):
        assert (out / plot).stat().st_size > 1000
    loaded = load_head(models, "hate", expected_fingerprint=minilm.fingerprint())
    assert loaded.version == 1 and loaded.spec.labels == ("hate", "noHate")
    # The default head (auto) may read the texts too (a lexical, hybrid or stacked head).
    text = ["a perfectly friendly sentence about gardening"]
    rows = loaded.predict(minilm.encode(text), text)
    assert rows[0]["label"] in ("hate", "noHate")
    assert loaded.metadata["data_hashes"][train.name]
    assert str(tmp_path) not in json.dumps(loaded.metadata)  # served by GET /heads/{name}
    copied = (out / "head" / "hate-v1.safetensors").read_bytes()  # what --mlflow logs
    assert headfile.sha256(copied) == loaded.metadata["artifact_sha256"]

    again = run_cli(
        "--data",
        str(train),
        "--cv",
        "3",
        "--head",
        "mlp",
        "--loss",
        "focal",
        "--name",
        "hate",
        "--models-dir",
        str(models),
        "--out",
        str(out / "cv"),
    )
    assert again.returncode == 0, again.stderr
    cv = json.loads((out / "cv" / "metrics.json").read_text())
    assert cv["embedding"]["cached"] == 200  # second run: no encoding
    assert len(cv["cv_folds"]) == 3 and cv["macro_f1_std"] >= 0
    assert (out / "cv" / "loss_curve.png").exists()
    assert load_head(models, "hate").version == 2


@needs_datasets
def test_multilabel_from_label_columns(tmp_path):
    data = tmp_path / "toxic.jsonl"
    with open(DATASETS / "toxic" / "train.csv", encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))[:160]
    for row in rows:
        row["text"] = row["text"][:200]  # short texts keep encoding cheap
    data.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    out = tmp_path / "run"
    result = run_cli(
        "--data",
        str(data),
        "--label-cols",
        "toxic,obscene,insult",
        "--test-size",
        "0.3",
        "--no-save",
        "--out",
        str(out),
    )
    assert result.returncode == 0, result.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["task"] == "multilabel" and metrics["labels"] == ["toxic", "obscene", "insult"]
    assert len(metrics["thresholds"]) == 3
    assert metrics["roc_auc"] > 0.6
    assert not (tmp_path / "models").exists()


def test_bad_data_exits_2_with_one_line(tmp_path, capsys):
    data = tmp_path / "data.csv"
    data.write_text("sentence,label\nhello,a\nworld,b\n", encoding="utf-8")
    result = run_cli("--data", str(data), "--no-save")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "no column ['text']" in lines[0] and "sentence" in lines[0]

    cases = {
        "one.csv": ("text,label\nhello,a\nworld,a\n", "only one class"),
        "empty.csv": ("text,label\n", "no data rows"),
        "data.parquet": ("x", "unknown file type"),
        "bad.jsonl": ('{"text": "a", "label": "x"}\nnot json\n', "line 2 is not JSON"),
    }
    for name, (content, message) in cases.items():
        path = tmp_path / name
        path.write_text(content, encoding="utf-8")
        assert main(["--data", str(path), "--no-save", "--model", MINILM]) == 2
        error = capsys.readouterr().err
        assert message in error and error.count("\n") == 1


def test_mlflow_missing_is_a_clear_error_before_any_work(tmp_path, capsys, monkeypatch):
    # A None entry in sys.modules makes `import mlflow` fail as if it were not installed.
    monkeypatch.setitem(sys.modules, "mlflow", None)
    data = tmp_path / "data.csv"
    data.write_text("text,label\nhello,a\nworld,b\n", encoding="utf-8")
    assert main(["--data", str(data), "--mlflow", "--no-save"]) == 2
    assert "bertheads[mlflow]" in capsys.readouterr().err
