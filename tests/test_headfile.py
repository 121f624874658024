"""Heads as safetensors + JSON: generic persistence, checks on the bytes, no pickle, numpy only."""

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest

from classifier import headfile, persist
from classifier.artifacts import load_head, save_head
from classifier.errors import CorruptHeadError, PersistError, UnsignedHeadError
from classifier.heads import LogisticHead, MLPHead
from classifier.tasks import TaskSpec
from classifier.training import train_head
from tests.conftest import REPO, run_python_json

ENCODER = {"fingerprint": "f" * 16, "dim": 12}


def vectors(rows: int = 240, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(rows, ENCODER["dim"])).astype(np.float32)


def labels_for(task: str, X: np.ndarray) -> Any:
    if task == "binary":
        return np.where(X[:, 0] + X[:, 1] > 0, "yes", "no").tolist()
    if task == "multiclass":
        return [("low", "mid", "high")[i] for i in np.digitize(X[:, 0], [-0.4, 0.4])]
    return np.column_stack([X[:, 0] > 0.8, X[:, 1] > 0, X[:, 2] < 0]).astype(int)


CASES = [
    ("binary", {"head": "logreg"}),
    ("multiclass", {"head": "logreg"}),
    ("multilabel", {"head": "logreg"}),
    ("binary", {"head": "logreg", "loss": "focal", "max_epochs": 5}),
    ("multiclass", {"head": "mlp", "max_epochs": 5}),
    ("multilabel", {"head": "mlp", "loss": "focal", "max_epochs": 5}),
]


@pytest.mark.parametrize(("task", "options"), CASES)
def test_every_head_round_trips_to_the_same_probabilities(task, options):
    X = vectors()
    names = ["a", "b", "c"] if task == "multilabel" else None
    trained = train_head(X, labels_for(task, X), label_names=names, test_size=0, **options)
    artifact = headfile.encode_head(trained.estimator, trained.spec, trained.thresholds, ENCODER)
    metadata = headfile.artifact_fields(artifact, None)
    loaded = headfile.decode_head(artifact, metadata, name="h", version=1)
    assert loaded.spec == trained.spec and loaded.fingerprint == ENCODER["fingerprint"]
    np.testing.assert_allclose(
        loaded.predict_proba(X), trained.estimator.predict_proba(X), atol=1e-6
    )
    assert loaded.thresholds == trained.thresholds


# -- generic components: nesting, string lists, lists of components --------------------------


class Vocabulary:
    """A feature step with a vocabulary (strings) and idf weights, reading texts."""

    persist_kind = "test_vocabulary"

    def __init__(self, words: list[str], idf: np.ndarray) -> None:
        self.words_, self.idf_ = words, idf

    def transform(self, texts: list[str]) -> np.ndarray:
        index = {word: column for column, word in enumerate(self.words_)}
        counts = np.zeros((len(texts), len(self.words_)), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in text.split():
                if word in index:
                    counts[row, index[word]] += 1
        return counts * self.idf_

    def to_state(self) -> tuple[dict, dict]:
        return {"lowercase": False}, {"words": self.words_, "idf": self.idf_}

    @classmethod
    def from_state(cls, config: dict, parts: dict) -> "Vocabulary":
        return cls(parts["words"], parts["idf"])


class Calibrated:
    """A stack: several sub-models, a per-class calibrator list, a feature step, a meta-model."""

    persist_kind = "test_stack"
    inputs_ = ("vectors", "texts")

    def __init__(self, features, models, calibrators, meta) -> None:
        self.features_, self.models_, self.calibrators_, self.meta_ = (
            features,
            models,
            calibrators,
            meta,
        )

    def predict_proba(self, X: np.ndarray, texts: list[str] | None = None) -> np.ndarray:
        lexical = self.features_.transform(texts).sum(axis=1, keepdims=True)
        columns = [model.predict_proba(X)[:, 1:] for model in self.models_]
        stacked = self.calibrators_[0].apply(np.hstack([*columns, lexical]))
        return self.meta_.predict_proba(stacked[:, : self.meta_.n_features_in_])

    def to_state(self) -> tuple[dict, dict]:
        return {"note": "nested"}, {
            "features": self.features_,
            "models": self.models_,
            "calibration": list(self.calibrators_),
            "meta": self.meta_,
            "empty": [],
        }

    @classmethod
    def from_state(cls, config: dict, parts: dict) -> "Calibrated":
        assert parts["empty"] == [] and config == {"note": "nested"}
        return cls(parts["features"], parts["models"], parts["calibration"], parts["meta"])


class Scale:
    persist_kind = "test_scale"

    def __init__(self, factor: np.ndarray) -> None:
        self.factor = factor

    def apply(self, values: np.ndarray) -> np.ndarray:
        return values * self.factor

    def to_state(self) -> tuple[dict, dict]:
        return {}, {"factor": self.factor}

    @classmethod
    def from_state(cls, config: dict, parts: dict) -> "Scale":
        return cls(parts["factor"])


# By name: pytest imports this file as `test_headfile`, other tests as `tests.test_headfile`.
persist.register("test_vocabulary", "tests.test_headfile:Vocabulary")
persist.register("test_stack", "tests.test_headfile:Calibrated")
persist.register("test_scale", "tests.test_headfile:Scale")

WORDS = ["refund", "", "naïve", "日本語", "emoji 🎉", "\ud800lone", "a" * 300]


def test_nested_components_string_lists_and_texts_round_trip():
    X = vectors()
    y = labels_for("binary", X)
    base = [LogisticHead(C=1.0).fit(X, y), MLPHead(max_epochs=3).fit(X, y)]
    meta = LogisticHead(C=1.0).fit(np.hstack([X[:, :2], X[:, :1]]), y)
    stack = Calibrated(
        Vocabulary(WORDS, np.linspace(0.5, 2, len(WORDS)).astype(np.float32)),
        base,
        [Scale(np.float32(0.5) * np.ones(1, dtype=np.float32))],
        meta,
    )
    texts = ["refund refund please", "naïve 日本語", "nothing"] * 80
    spec = TaskSpec("binary", ("no", "yes"))
    artifact = headfile.encode_head(stack, spec, None, ENCODER)
    loaded = headfile.decode_head(
        artifact, headfile.artifact_fields(artifact, None), name="stack", version=3
    )
    assert loaded.inputs == ("vectors", "texts") and loaded.needs_texts
    rebuilt = loaded.model
    assert rebuilt.features_.words_ == WORDS  # unicode, empty and lone-surrogate strings intact
    assert len(rebuilt.models_) == 2 and len(rebuilt.calibrators_) == 1
    np.testing.assert_allclose(
        loaded.predict_proba(X, texts), stack.predict_proba(X, texts), atol=1e-6
    )
    rows = loaded.predict(X[:3], texts[:3])
    assert [row["label"] for row in rows] == [
        ("no", "yes")[int(p.argmax())] for p in stack.predict_proba(X[:3], texts[:3])
    ]
    with pytest.raises(Exception, match="texts"):
        loaded.predict(X[:3])


def test_what_cannot_be_saved_is_refused_by_name():
    class Unregistered:
        persist_kind = "nobody_registered_this"

        def to_state(self):
            return {}, {}

    with pytest.raises(PersistError, match="not registered"):
        persist.dump(Unregistered())
    with pytest.raises(PersistError, match="object"):
        persist.dump(Scale(np.array([object()], dtype=object)))
    with pytest.raises(PersistError, match="JSON"):
        persist.dump(type("Odd", (Scale,), {"to_state": lambda self: ({"x": {1, 2}}, {})})(None))


def test_unknown_kind_and_malformed_trees_are_refused():
    X = vectors()
    model = LogisticHead(C=1.0).fit(X, labels_for("binary", X))
    tree, arrays = persist.dump(model)
    with pytest.raises(CorruptHeadError, match="unknown component kind 'os_system'"):
        persist.load({**tree, "kind": "os_system"}, arrays)
    with pytest.raises(CorruptHeadError, match="missing"):
        persist.load(tree, {})
    bad = json.loads(json.dumps(tree))
    bad["parts"]["mean"] = {"pickle": "x"}
    with pytest.raises(CorruptHeadError, match="part form"):
        persist.load(bad, arrays)


# -- the bytes are checked, then parsed; nothing is ever unpickled ------------------------------


@pytest.fixture
def saved(tmp_path):
    X = vectors()
    trained = train_head(X, labels_for("multiclass", X), test_size=0)
    save_head(trained, tmp_path, "h", ENCODER, signing_key=b"right key")
    return tmp_path, X, trained


def artifact_path(root):
    return root / "h" / "v1.safetensors"


def test_a_flipped_byte_is_refused(saved):
    root, _, _ = saved
    path = artifact_path(root)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptHeadError, match="checksum"):
        load_head(root, "h")


def test_signing_key_on_and_off(saved):
    root, X, _ = saved
    # Off: a signed head loads; on with the right key: loads; with another key: refused.
    assert load_head(root, "h").version == 1
    assert load_head(root, "h", signing_key=b"right key").version == 1
    with pytest.raises(UnsignedHeadError, match="signature"):
        load_head(root, "h", signing_key=b"wrong key")
    # An unsigned head is refused when a key is set.
    save_head(train_head(X, labels_for("multiclass", X), test_size=0), root, "plain", ENCODER)
    assert load_head(root, "plain").version == 1
    with pytest.raises(UnsignedHeadError, match="not signed"):
        load_head(root, "plain", signing_key=b"right key")
    # A tampered artifact with its checksum recomputed passes the checksum, not the HMAC.
    path = artifact_path(root)
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x40  # inside the last weight: still a valid safetensors file
    path.write_bytes(bytes(data))
    metadata_path = root / "h" / "v1.json"
    metadata = json.loads(metadata_path.read_text())
    metadata["artifact_sha256"] = headfile.sha256(bytes(data))
    metadata_path.write_text(json.dumps(metadata))
    assert load_head(root, "h").version == 1  # without a key only the checksum guards it
    with pytest.raises(UnsignedHeadError, match="signature"):
        load_head(root, "h", signing_key=b"right key")


class Payload:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_a_pickle_with_a_matching_checksum_is_never_executed(saved):
    root, _, _ = saved
    marker = root / "pwned"
    evil = pickle.dumps(Payload(str(marker)))
    artifact_path(root).write_bytes(evil)
    metadata_path = root / "h" / "v1.json"
    metadata = json.loads(metadata_path.read_text())
    metadata["artifact_sha256"] = headfile.sha256(evil)
    metadata_path.write_text(json.dumps(metadata))
    with pytest.raises(CorruptHeadError):
        load_head(root, "h")
    assert not marker.exists()
    # The same bytes handed straight to the decoder, and as a .npz-looking zip: refused.
    with pytest.raises(CorruptHeadError):
        headfile.decode_head(evil, metadata, name="h", version=1)
    assert not marker.exists()


# -- the serving path imports neither torch nor scikit-learn -------------------------------------

LOAD_AND_PREDICT = """
import json, sys, time
import numpy as np
started = time.perf_counter()
from classifier.artifacts import load_head
head = load_head(sys.argv[1], sys.argv[2])
probabilities = head.predict_proba(np.load(sys.argv[3]))
elapsed = time.perf_counter() - started
print(json.dumps({
    "torch": "torch" in sys.modules,
    "sklearn": "sklearn" in sys.modules,
    "scipy": "scipy" in sys.modules,
    "probabilities": probabilities.tolist(),
    "seconds": elapsed,
}))
"""


@pytest.mark.parametrize("head", ["logreg", "mlp"])
def test_loading_and_predicting_imports_neither_torch_nor_sklearn(tmp_path, head):
    X = vectors()
    trained = train_head(X, labels_for("multiclass", X), head=head, max_epochs=5, test_size=0)
    save_head(trained, tmp_path / "models", "h", ENCODER)
    np.save(tmp_path / "x.npy", X[:20])
    arguments = [str(tmp_path / "models"), "h", str(tmp_path / "x.npy")]
    report = run_python_json(LOAD_AND_PREDICT, *arguments)
    assert report["torch"] is False and report["sklearn"] is False, report
    np.testing.assert_allclose(
        report["probabilities"], trained.estimator.predict_proba(X[:20]), atol=1e-6
    )


# -- joblib heads: refused by name, converted once by classifier.legacy -------------------------


def write_legacy_version(directory: Path, version: int, estimator: object, metadata: dict) -> None:
    """A head exactly as the joblib format (1) saved it: vN.joblib + vN.json with its sha256."""
    path = directory / f"v{version}.joblib"
    joblib.dump({"estimator": estimator, "format": 1}, path)
    legacy = {k: v for k, v in metadata.items() if not k.startswith("artifact_")}
    legacy.update(
        version=version,
        format=1,
        joblib_file=path.name,
        joblib_sha256=headfile.sha256(path.read_bytes()),
    )
    (directory / f"v{version}.json").write_text(json.dumps(legacy))


def test_legacy_heads_are_refused_then_convert_to_the_same_predictions(tmp_path):
    from classifier.artifacts import build_metadata
    from classifier.errors import LegacyHeadError

    X = vectors()
    directory = tmp_path / "models" / "h"
    directory.mkdir(parents=True)
    originals = []
    for version, (task, options) in enumerate(CASES[:3] + CASES[4:5], start=1):
        names = ["a", "b", "c"] if task == "multilabel" else None
        trained = train_head(X, labels_for(task, X), label_names=names, test_size=0, **options)
        metadata = build_metadata(trained, ENCODER)
        write_legacy_version(directory, version, trained.estimator, metadata)
        originals.append(trained)
    # The first pointer format: v2 pinned while v4 was the newest.
    (directory / "live.json").write_text(json.dumps({"version": 2, "newest": 4}))
    with pytest.raises(LegacyHeadError, match=r"python -m classifier\.legacy convert"):
        load_head(tmp_path / "models", "h")
    command = [sys.executable, "-m", "classifier.legacy", "convert", str(tmp_path / "models")]
    converted = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False)
    assert converted.returncode == 0, converted.stderr
    assert converted.stdout.count("converted (probabilities match") == 4
    for version, trained in enumerate(originals, start=1):
        loaded = load_head(tmp_path / "models", "h", version)
        np.testing.assert_allclose(
            loaded.predict_proba(X), trained.estimator.predict_proba(X), atol=1e-6
        )
        assert loaded.thresholds == trained.thresholds
        assert loaded.metadata["converted"]["from"] == "joblib"
    assert load_head(tmp_path / "models", "h").version == 2  # the pinned version stays live
    assert not list(directory.glob("*.joblib"))
    assert len(list((tmp_path / "models" / ".trash").glob("h-v*-joblib-*/*.joblib"))) == 4
    again = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False)
    assert again.returncode == 0 and again.stdout.count("already converted") == 4
