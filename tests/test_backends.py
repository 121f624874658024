"""ONNX backends against the torch reference, with the real MiniLM model exported for real."""

import shutil
from pathlib import Path

import numpy as np
import pytest

from embedder import Encoder, InvalidConfigError, load_encoder, onnx_backend, onnx_int8
from embedder.backends import BACKENDS

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
ONNX_BACKENDS = [name for name in BACKENDS if name != "torch"]
SENTENCES = [
    "The white man has no future here, the country is being flooded.",
    "I take the assumption that your nation is not worth remembering.",
    "Thank you for the lovely dinner last night!",
    "ok",
    "Scientists measured the temperature of the ocean at two hundred sites over ten years, "
    "and the results surprised everyone who had followed the earlier studies.",
    "Why would anyone believe that?",
]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # A fresh cache per run, so the export and quantization paths run every time.
    return tmp_path_factory.mktemp("bertheads-cache")


@pytest.fixture(scope="module")
def encoders(cache_dir: Path) -> dict[str, Encoder]:
    return {name: load_encoder(MINILM, backend=name, cache_dir=cache_dir) for name in BACKENDS}


def cosine(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    return (left * right).sum(1) / (np.linalg.norm(left, axis=1) * np.linalg.norm(right, axis=1))


# (mean, min) cosine to torch fp32. int8 activations are quantized per batch, so very short
# texts ("ok") stray most; the product bar on 478 real texts is mean 0.99 / min 0.95.
FLOORS = {"onnx": (0.9999, 0.9999), "onnx-int8": (0.99, 0.98)}


@pytest.mark.parametrize("backend", ONNX_BACKENDS)
def test_onnx_vectors_agree_with_torch(encoders: dict[str, Encoder], backend: str) -> None:
    reference = encoders["torch"].encode(SENTENCES)
    vectors = encoders[backend].encode(SENTENCES)
    assert vectors.dtype == np.float32
    assert vectors.shape == reference.shape == (len(SENTENCES), 384)
    similarity = cosine(vectors, reference)
    assert similarity.mean() >= FLOORS[backend][0]
    assert similarity.min() >= FLOORS[backend][1]


def test_fp32_onnx_is_numerically_the_same_model(encoders: dict[str, Encoder]) -> None:
    reference = encoders["torch"].encode(SENTENCES)
    np.testing.assert_allclose(encoders["onnx"].encode(SENTENCES), reference, atol=1e-4)


def test_padding_does_not_change_fp32_vectors(encoders: dict[str, Encoder]) -> None:
    # One padded batch against one text per batch: exercises the dynamic axes and the mask.
    batched = encoders["onnx"].encode(SENTENCES, batch_size=len(SENTENCES))
    alone = encoders["onnx"].encode(SENTENCES, batch_size=1)
    assert cosine(batched, alone).min() >= 0.9999


def test_int8_stays_faithful_in_any_batch(encoders: dict[str, Encoder]) -> None:
    # Batch-wide activation ranges make int8 vectors depend a little on their batch-mates.
    reference = encoders["torch"].encode(SENTENCES)
    for size in (1, 2, len(SENTENCES)):
        vectors = encoders["onnx-int8"].encode(SENTENCES, batch_size=size)
        assert cosine(vectors, reference).min() >= FLOORS["onnx-int8"][1]


def test_unfaithful_int8_is_refused_not_served(
    encoders: dict[str, Encoder], cache_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Seed the fp32 export so only quantization runs again.
    folder = Path("onnx") / encoders["torch"].resolved.weights_sha256[:16]
    (tmp_path / folder).mkdir(parents=True)
    shutil.copy(cache_dir / folder / onnx_backend.FP32_FILE, tmp_path / folder)
    # An unreachable floor stands in for a model the recipe cannot quantize faithfully.
    monkeypatch.setattr(onnx_int8, "INT8_COSINE_FLOOR", 1.01)
    for _ in range(2):  # the second attempt is refused from the remembered verdict
        with pytest.raises(InvalidConfigError, match="valid faithful choices: torch, onnx"):
            load_encoder(MINILM, backend="onnx-int8", cache_dir=tmp_path)
    assert not list(tmp_path.rglob("model-int8*.onnx"))
    assert load_encoder(MINILM, backend="onnx", cache_dir=tmp_path).dim == 384


def test_fingerprints_differ_per_backend(encoders: dict[str, Encoder]) -> None:
    fingerprints = {name: encoder.fingerprint() for name, encoder in encoders.items()}
    assert len(set(fingerprints.values())) == len(BACKENDS)
    assert {encoder.describe()["backend"] for encoder in encoders.values()} == set(BACKENDS)


def test_exports_are_cached_and_complete(encoders: dict[str, Encoder], cache_dir: Path) -> None:
    sha = encoders["torch"].resolved.weights_sha256
    directory = cache_dir / "onnx" / sha[:16]
    files = sorted(path.name for path in directory.iterdir() if path.suffix == ".onnx")
    assert len(files) == 2, files
    assert not [path for path in directory.iterdir() if path.suffix == ".tmp"]
    stamps = {path: path.stat().st_mtime_ns for path in directory.glob("*.onnx")}
    for backend in ONNX_BACKENDS:
        load_encoder(MINILM, backend=backend, cache_dir=cache_dir)
    assert {path: path.stat().st_mtime_ns for path in directory.glob("*.onnx")} == stamps
