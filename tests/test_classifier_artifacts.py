import json
import os
import pickle

import numpy as np
import pytest
from conftest import MINILM

from classifier import (
    CorruptHeadError,
    FingerprintMismatchError,
    HeadNotFoundError,
    InputShapeError,
    InvalidParameterError,
    list_heads,
    load_head,
    save_head,
    train_head,
)
from embedder import load_encoder

TEXTS = [
    "I love this film, it was wonderful",
    "What a great and happy day",
    "Fantastic service, very friendly staff",
    "This is the best book I have read",
    "Terrible movie, a complete waste of time",
    "I hate waiting in this awful queue",
    "The food was cold and disgusting",
    "Worst experience, never coming back",
] * 3


@pytest.fixture(scope="module")
def trained_on_minilm(minilm):
    vectors = minilm.encode(TEXTS)
    labels = ["positive"] * 4 + ["negative"] * 4
    trained = train_head(vectors, labels * 3, test_size=0, C=1.0)
    return trained, vectors


def test_save_load_predict_round_trip(tmp_path, minilm, trained_on_minilm):
    trained, _ = trained_on_minilm
    first = save_head(trained, tmp_path, "sentiment", minilm.describe(), {"data.csv": "abc"})
    second = save_head(trained, tmp_path, "sentiment", minilm.describe())
    assert (first.version, second.version) == (1, 2)
    assert sorted(path.name for path in (tmp_path / "sentiment").iterdir()) == [
        "live.json",
        "v1.json",
        "v1.safetensors",
        "v2.json",
        "v2.safetensors",
    ]
    metadata = json.loads((tmp_path / "sentiment" / "v1.json").read_text())
    assert metadata == first.metadata
    for key in (
        "name",
        "version",
        "created",
        "encoder",
        "task",
        "labels",
        "thresholds",
        "params",
        "data_hashes",
        "metrics",
        "artifact_sha256",
        "artifact_bytes",
    ):
        assert key in metadata
    assert metadata["encoder"]["fingerprint"] == minilm.fingerprint()
    assert metadata["encoder"]["dim"] == 384
    loaded = load_head(tmp_path, "sentiment", expected_fingerprint=minilm.fingerprint())
    assert loaded.version == 2
    predictions = loaded.predict(minilm.encode(["a wonderful, lovely film", "awful and cold food"]))
    assert [row["label"] for row in predictions] == ["positive", "negative"]
    assert set(predictions[0]["probabilities"]) == {"negative", "positive"}
    assert sum(predictions[0]["probabilities"].values()) == pytest.approx(1, abs=1e-5)
    listed = list_heads(tmp_path)
    assert [(head["name"], head["versions"]) for head in listed] == [("sentiment", [1, 2])]
    with pytest.raises(InputShapeError, match="384"):
        loaded.predict(np.zeros((1, 10), dtype=np.float32))


def test_multilabel_prediction_uses_stored_thresholds(tmp_path):
    generator = np.random.default_rng(0)
    X = generator.normal(size=(300, 6)).astype(np.float32)
    Y = np.column_stack([X[:, 0] > 1, X[:, 1] > 0]).astype(int)
    trained = train_head(X, Y, label_names=["rare", "common"], test_size=0)
    save_head(trained, tmp_path, "tags", {"fingerprint": "f", "dim": 6})
    loaded = load_head(tmp_path, "tags")
    assert loaded.thresholds == pytest.approx(trained.thresholds)
    rows = loaded.predict(X[:50])
    probabilities = loaded.predict_proba(X[:50])
    for row, scores in zip(rows, probabilities, strict=True):
        expected = [
            n
            for n, p, t in zip(("rare", "common"), scores, loaded.thresholds, strict=True)
            if p >= t
        ]
        assert row["labels"] == expected


def test_corrupt_or_tampered_artifact_is_refused_without_unpickling(
    tmp_path, trained_on_minilm, minilm
):
    trained, _ = trained_on_minilm
    save_head(trained, tmp_path, "sentiment", minilm.describe())
    artifact = tmp_path / "sentiment" / "v1.safetensors"
    content = artifact.read_bytes()
    artifact.write_bytes(content[: len(content) // 2])  # truncated
    with pytest.raises(CorruptHeadError, match="checksum"):
        load_head(tmp_path, "sentiment")
    marker = tmp_path / "unpickled"

    class Payload:
        def __reduce__(self):
            return (os.mkdir, (str(marker),))

    artifact.write_bytes(pickle.dumps(Payload()))  # would run code if unpickled
    with pytest.raises(CorruptHeadError):
        load_head(tmp_path, "sentiment")
    assert not marker.exists()
    artifact.unlink()
    with pytest.raises(CorruptHeadError, match="missing"):
        load_head(tmp_path, "sentiment")


def test_head_from_another_encoder_is_refused(tmp_path, trained_on_minilm, minilm):
    trained, _ = trained_on_minilm
    save_head(trained, tmp_path, "sentiment", minilm.describe())
    other = load_encoder(MINILM, max_seq_len=64)  # another vector space, same model files
    assert other.fingerprint() != minilm.fingerprint()
    with pytest.raises(FingerprintMismatchError, match="trained on encoder"):
        load_head(tmp_path, "sentiment", expected_fingerprint=other.fingerprint())
    loaded = load_head(tmp_path, "sentiment")
    with pytest.raises(FingerprintMismatchError):
        loaded.check_encoder(other.fingerprint())


def test_missing_heads_and_bad_names(tmp_path, trained_on_minilm, minilm):
    trained, _ = trained_on_minilm
    with pytest.raises(HeadNotFoundError, match="nothing"):
        load_head(tmp_path, "nothing")
    save_head(trained, tmp_path, "sentiment", minilm.describe())
    with pytest.raises(HeadNotFoundError, match="versions: \\[1\\]"):
        load_head(tmp_path, "sentiment", version=7)
    with pytest.raises(InvalidParameterError, match="name"):
        save_head(trained, tmp_path, "../escape", minilm.describe())
    (tmp_path / "sentiment" / "v1.json").write_text("{not json")
    with pytest.raises(CorruptHeadError, match="metadata"):
        load_head(tmp_path, "sentiment")
    assert list_heads(tmp_path) == []
