"""Backends against the torch reference and the fidelity gate, on the real MiniLM exported for real.

The int8 verdict depends on the CPU: where onnx-int8 passes the gate these tests check its
vectors; where it fails they check that torch serves instead and says why. Either way a
test runs and can fail.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from embedder import Encoder, InvalidConfigError, UnfaithfulBackendError, fidelity, load_encoder
from embedder.backends import BACKENDS, resolve_device
from embedder.onnx_backend import FP32_FILE, OnnxBackend, model_directory, runtime_name
from embedder.onnx_int8 import INT8_FILE
from tests.conftest import MINILM, REPO, make_settings

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
# (mean, min) cosine to torch fp32 on these sentences. int8 activations are quantized per
# batch, so very short texts ("ok") stray most.
FLOORS = {"onnx": (0.9999, 0.9999), "onnx-int8": (0.99, 0.98)}


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # A fresh cache per run, so the reference, export, quantization and gate run every time.
    return tmp_path_factory.mktemp("bertheads-cache")


@pytest.fixture(scope="module")
def encoders(cache_dir: Path) -> dict[str, Encoder]:
    return {name: load_encoder(MINILM, backend=name, cache_dir=cache_dir) for name in BACKENDS}


@pytest.fixture(scope="module")
def directory(encoders: dict[str, Encoder], cache_dir: Path) -> Path:
    return model_directory(cache_dir, encoders["torch"].resolved.weights_sha256)


def stored_verdict(directory: Path, file_name: str) -> dict:
    path = fidelity.verdict_path(directory, Path(file_name).stem, runtime_name())
    return json.loads(path.read_text())


def seeded_cache(source: Path, target_root: Path, weights_sha256: str) -> Path:
    """A cache holding the built files of `source` but no verdicts: only the gate runs again."""
    target = model_directory(target_root, weights_sha256)
    target.mkdir(parents=True)
    for path in source.iterdir():
        if path.is_file() and path.suffix in (".onnx", ".npz"):
            shutil.copy(path, target)
    return target


@pytest.mark.parametrize("backend", ONNX_BACKENDS)
def test_each_backend_is_faithful_or_replaced_by_torch(
    encoders: dict[str, Encoder], directory: Path, backend: str
) -> None:
    encoder = encoders[backend]
    reference = encoders["torch"].encode(SENTENCES)
    vectors = encoder.encode(SENTENCES)
    assert vectors.dtype == np.float32
    assert vectors.shape == reference.shape == (len(SENTENCES), 384)
    verdict = stored_verdict(directory, INT8_FILE if backend == "onnx-int8" else FP32_FILE)
    assert verdict["cpu_features"] == fidelity.cpu_features()
    if verdict["poolings"]["mean"]["faithful"]:
        assert encoder.backend_name == backend and encoder.fallback_reason is None
        similarity = fidelity.cosine(vectors, reference)
        assert similarity.mean() >= FLOORS[backend][0]
        assert similarity.min() >= FLOORS[backend][1]
    else:
        # This CPU fails the gate: torch serves, says why, and gives the reference vectors.
        assert encoder.backend_name == "torch" and encoder.requested_backend == backend
        assert "not faithful" in encoder.fallback_reason
        assert f"{verdict['poolings']['mean']['cosine_min']:.4f}" in encoder.fallback_reason
        np.testing.assert_array_equal(vectors, reference)


def test_fp32_onnx_is_numerically_the_same_model(encoders: dict[str, Encoder]) -> None:
    assert encoders["onnx"].backend_name == "onnx"
    reference = encoders["torch"].encode(SENTENCES)
    np.testing.assert_allclose(encoders["onnx"].encode(SENTENCES), reference, atol=1e-4)


def test_padding_does_not_change_fp32_vectors(encoders: dict[str, Encoder]) -> None:
    # One padded batch against one text per batch: exercises the dynamic axes and the mask.
    batched = encoders["onnx"].encode(SENTENCES, batch_size=len(SENTENCES))
    alone = encoders["onnx"].encode(SENTENCES, batch_size=1)
    assert fidelity.cosine(batched, alone).min() >= 0.9999


def test_a_twin_on_other_threads_gives_the_same_vectors(encoders: dict[str, Encoder]) -> None:
    for name in ("onnx", "onnx-int8"):
        if encoders[name].backend_name != name:
            continue  # refused by the gate on this CPU: torch serves, no twin to make
        twin = encoders[name].with_threads(2)
        assert twin.backend is not encoders[name].backend
        assert twin.backend.session.get_session_options().intra_op_num_threads == 2
        assert twin.fingerprint() == encoders[name].fingerprint()
        same = fidelity.cosine(twin.encode(SENTENCES), encoders[name].encode(SENTENCES))
        assert same.min() >= 0.9999
    with pytest.raises(InvalidConfigError, match="need an ONNX backend; this one runs torch"):
        encoders["torch"].with_threads(2)


def test_int8_stays_faithful_in_any_batch(encoders: dict[str, Encoder]) -> None:
    # Batch-wide activation ranges make int8 vectors depend a little on their batch-mates.
    reference = encoders["torch"].encode(SENTENCES)
    for size in (1, 2, len(SENTENCES)):
        vectors = encoders["onnx-int8"].encode(SENTENCES, batch_size=size)
        assert fidelity.cosine(vectors, reference).min() >= FLOORS["onnx-int8"][1]


def test_int8_recipe_v2_passes_the_gate_on_this_cpu(directory: Path) -> None:
    # 7-bit weights keep the u8 x s8 products of AVX2 (no VNNI) from saturating int16, so the
    # integer result is exact on every x86 kernel; recipe v1 reached min cosine 0.952 here.
    verdict = stored_verdict(directory, INT8_FILE)
    for pooling, scores in verdict["poolings"].items():
        assert scores["faithful"], (pooling, scores)
        assert scores["cosine_min"] >= fidelity.MIN_COSINE_FLOOR


def test_unfaithful_backend_is_refused_and_torch_serves(
    encoders: dict[str, Encoder],
    directory: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    seeded = seeded_cache(directory, tmp_path, encoders["torch"].resolved.weights_sha256)
    # An unreachable floor stands in for a CPU on which the recipe is not faithful.
    monkeypatch.setattr(fidelity, "MIN_COSINE_FLOOR", 1.01)
    with pytest.raises(UnfaithfulBackendError, match="valid faithful choices on this CPU: torch"):
        load_encoder(MINILM, backend="onnx-int8", cache_dir=tmp_path, fallback=False)
    with caplog.at_level("WARNING", logger="embedder.backends"):
        served = load_encoder(MINILM, backend="onnx-int8", cache_dir=tmp_path)
    assert any("serving torch fp32 instead" in record.message for record in caplog.records)
    assert served.backend_name == "torch" and served.requested_backend == "onnx-int8"
    assert served.precision == "fp32" and "not faithful" in served.fallback_reason
    assert served.describe()["fallback_reason"] == served.fallback_reason
    assert served.fingerprint() == encoders["torch"].fingerprint()
    np.testing.assert_array_equal(served.encode(SENTENCES), encoders["torch"].encode(SENTENCES))
    # The verdict is stored for this CPU and read back, not measured again.
    verdicts = list((seeded / fidelity.VERDICTS_FOLDER).glob("model-int8-v2-*.json"))
    assert len(verdicts) == 1
    stamp = verdicts[0].stat().st_mtime_ns
    monkeypatch.setattr(fidelity, "MIN_COSINE_FLOOR", 0.0)
    assert load_encoder(MINILM, backend="onnx-int8", cache_dir=tmp_path).backend_name == "torch"
    assert verdicts[0].stat().st_mtime_ns == stamp


def test_a_verdict_is_trusted_only_from_this_cpu_signature(
    encoders: dict[str, Encoder], directory: Path, tmp_path: Path
) -> None:
    seeded = seeded_cache(directory, tmp_path, encoders["torch"].resolved.weights_sha256)
    mine = stored_verdict(directory, INT8_FILE)
    # Another CPU (say AVX2 without VNNI on recipe v1) found int8 unfaithful, and says so.
    foreign = {
        **mine,
        "cpu_signature": "0123456789ab",
        "cpu_features": ["avx", "avx2"],
        "poolings": {
            pooling: {"cosine_mean": 0.9, "cosine_min": 0.5, "faithful": False}
            for pooling in mine["poolings"]
        },
    }
    folder = seeded / fidelity.VERDICTS_FOLDER
    folder.mkdir()
    (folder / "model-int8-v2-0123456789ab.json").write_text(json.dumps(foreign))
    loaded = load_encoder(MINILM, backend="onnx-int8", cache_dir=tmp_path)
    expected = "onnx-int8" if mine["poolings"]["mean"]["faithful"] else "torch"
    assert loaded.backend_name == expected
    assert len(list(folder.glob("*.json"))) == 2  # this CPU's verdict was measured and added
    # The same file under this CPU's own signature is trusted: torch serves, citing it.
    fidelity.verdict_path(seeded, "model-int8-v2", runtime_name()).write_text(json.dumps(foreign))
    refused = load_encoder(MINILM, backend="onnx-int8", cache_dir=tmp_path)
    assert refused.backend_name == "torch" and "min 0.5000" in refused.fallback_reason


def test_cpu_signature_names_features_and_runtime() -> None:
    assert fidelity.cpu_signature("onnxruntime 1.0") != fidelity.cpu_signature("onnxruntime 2.0")
    assert fidelity.cpu_signature("x") == fidelity.cpu_signature("x")
    features = fidelity.cpu_features()
    if Path("/proc/cpuinfo").is_file() and os.uname().machine == "x86_64":
        assert "avx2" in features or "sse4_2" in features


def test_every_faithful_backend_shares_one_space(encoders: dict[str, Encoder]) -> None:
    fingerprints = {encoder.fingerprint() for encoder in encoders.values()}
    assert len(fingerprints) == 1
    assert {encoder.describe()["requested_backend"] for encoder in encoders.values()} == set(
        BACKENDS
    )


def test_exports_are_cached_and_complete(encoders: dict[str, Encoder], directory: Path) -> None:
    files = sorted(path.name for path in directory.iterdir() if path.is_file())
    assert files == sorted([".lock", FP32_FILE, INT8_FILE, fidelity.REFERENCE_FILE]), files
    optimized = sorted(path.name for path in (directory / "optimized").iterdir())
    assert len(optimized) == 2 and all(name.endswith(".onnx") for name in optimized), optimized
    assert not list(directory.rglob("*.tmp"))
    stamps = {path: path.stat().st_mtime_ns for path in directory.rglob("*") if path.is_file()}
    for backend in ONNX_BACKENDS:
        load_encoder(MINILM, backend=backend, cache_dir=directory.parent.parent)
    assert {path: path.stat().st_mtime_ns for path in stamps} == stamps


def test_saved_optimized_graph_gives_the_same_vectors(
    encoders: dict[str, Encoder], directory: Path
) -> None:
    ids, mask = encoders["torch"]._batch_tokenizer(SENTENCES)
    for name in (FP32_FILE, INT8_FILE):
        fresh = OnnxBackend(directory / name, optimize=False)(ids, mask, "mean")
        saved = OnnxBackend(directory / name, optimize=True)(ids, mask, "mean")
        np.testing.assert_allclose(saved, fresh, atol=1e-5)


def test_health_names_the_backend_serving_and_why(
    encoders: dict[str, Encoder], directory: Path, tmp_path: Path, redis_url: str
) -> None:
    seeded = seeded_cache(directory, tmp_path / "cache", encoders["torch"].resolved.weights_sha256)
    mine = stored_verdict(directory, INT8_FILE)
    settings = make_settings(tmp_path, redis_url, embedder_cache_dir=tmp_path / "cache")
    assert settings.embedder_backend == "onnx-int8"  # the default
    with TestClient(create_app(settings)) as client:
        health = client.get("/health").json()
    faithful = mine["poolings"]["mean"]["faithful"]
    assert health["backend"] == ("onnx-int8" if faithful else "torch")
    assert (health["fallback_reason"] is None) == faithful
    assert health["device"] == "cpu"
    # A CPU whose verdict refuses int8: the server starts anyway, on torch, and says why.
    refused = {
        **mine,
        "poolings": {
            pooling: {"cosine_mean": 0.97, "cosine_min": 0.952, "faithful": False}
            for pooling in mine["poolings"]
        },
    }
    fidelity.verdict_path(seeded, "model-int8-v2", runtime_name()).write_text(json.dumps(refused))
    with TestClient(create_app(settings)) as client:
        health = client.get("/health").json()
        embedded = client.post("/embed", json={"texts": ["still served"]})
    assert health["backend"] == "torch" and health["device"] == "cpu"
    assert "onnx-int8" in health["fallback_reason"] and "0.9520" in health["fallback_reason"]
    assert embedded.status_code == 200


def test_prepare_builds_and_reports_each_step(
    encoders: dict[str, Encoder], directory: Path, tmp_path: Path
) -> None:
    seeded_cache(directory, tmp_path, encoders["torch"].resolved.weights_sha256)
    environment = {**os.environ, "EMBEDDER_MODEL": MINILM, "EMBEDDER_CACHE_DIR": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-m", "embedder.prepare"],
        cwd=REPO,
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stdout.splitlines() if ": done in " in line]
    assert len(lines) == 6, done.stdout  # find, reference, export, int8, optimised, gate
    assert "the server will serve" in done.stdout
    built = model_directory(tmp_path, encoders["torch"].resolved.weights_sha256)
    assert list((built / fidelity.VERDICTS_FOLDER).glob("model-int8-v2-*.json"))
    assert list((built / "optimized").glob("model-int8-v2-*.onnx"))


def test_device_choices_are_checked_and_cuda_needs_a_gpu() -> None:
    with pytest.raises(InvalidConfigError, match="auto, cpu, cuda"):
        resolve_device("tpu", "torch")
    assert resolve_device("cpu", "torch") == "cpu"
    import torch

    if torch.cuda.is_available():
        assert resolve_device("cuda", "onnx-int8") == "cuda"
    else:
        with pytest.raises(InvalidConfigError, match="valid choices here: auto, cpu"):
            resolve_device("cuda", "torch")
        assert resolve_device("auto", "torch") == "cpu"


ONNX_COLD_PATH = """
import sys
from embedder import EmbeddingCache, EmbeddingService, connect, load_encoder
encoder = load_encoder(sys.argv[1], backend=sys.argv[2], device="auto", cache_dir=sys.argv[3])
service = EmbeddingService(encoder, EmbeddingCache(connect(sys.argv[4])))
result = service.embed(["a first text", "and a second, longer one"])
assert result.vectors.shape == (2, encoder.dim), result.vectors.shape
assert encoder.backend_name == sys.argv[2], encoder.fallback_reason
heavy = sorted(name for name in ("torch", "transformers") if name in sys.modules)
print("HEAVY=" + ",".join(heavy))
"""


@pytest.mark.parametrize("backend", ONNX_BACKENDS)
def test_onnx_path_never_imports_torch_or_transformers(
    encoders: dict[str, Encoder], cache_dir: Path, backend: str, redis_url: str
) -> None:
    if encoders[backend].backend_name != backend:
        pytest.skip(f"{backend} fails the gate on this CPU: torch serves (tested above)")
    done = subprocess.run(
        [sys.executable, "-c", ONNX_COLD_PATH, MINILM, backend, str(cache_dir), redis_url],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "HEAVY=\n" in done.stdout, done.stdout


def test_numpy_pooling_matches_the_torch_pooling() -> None:
    import torch

    from embedder.pooling import POOLINGS, pool
    from embedder.torch_backend import torch_pool

    generator = np.random.default_rng(0)
    tokens = generator.normal(size=(3, 7, 5)).astype(np.float32)
    mask = np.array([[1] * 7, [1] * 3 + [0] * 4, [1] + [0] * 6], dtype=np.int64)
    for mode in POOLINGS:
        expected = torch_pool(torch.from_numpy(tokens), torch.from_numpy(mask), mode).numpy()
        np.testing.assert_allclose(pool(tokens, mask, mode), expected, rtol=1e-6, atol=1e-6)
    # Padding never leaks into mean or max.
    poisoned = tokens.copy()
    poisoned[mask == 0] = 1e6
    for mode in POOLINGS:
        np.testing.assert_allclose(pool(poisoned, mask, mode), pool(tokens, mask, mode))


@pytest.mark.skipif(
    not __import__("torch").cuda.is_available(), reason="no CUDA device on this machine"
)
def test_cuda_fp16_passes_the_gate_and_shares_the_space(
    encoders: dict[str, Encoder], tmp_path: Path
) -> None:
    gpu = load_encoder(MINILM, device="cuda", batch_size=None, cache_dir=tmp_path)
    assert gpu.device == "cuda" and gpu.backend_name == "torch"
    assert gpu.precision == "fp16", gpu.fallback_reason
    assert gpu.batch_size >= 32
    assert gpu.fingerprint() == encoders["torch"].fingerprint()
    similarity = fidelity.cosine(gpu.encode(SENTENCES), encoders["torch"].encode(SENTENCES))
    assert similarity.min() >= fidelity.MIN_COSINE_FLOOR


READ_ONLY_SERVE = """
import sys
from pathlib import Path
from embedder import load_encoder
encoder = load_encoder(sys.argv[1], backend="onnx-int8", cache_dir=Path(sys.argv[2]))
vectors = encoder.encode(["a read-only model cache still serves"])
print("SERVED=" + encoder.backend_name, vectors.shape)
"""


def test_a_read_only_model_cache_on_another_cpu_still_serves(
    encoders: dict[str, Encoder], directory: Path, tmp_path: Path
) -> None:
    # A container image built on another CPU: the files are there, this CPU's verdict and
    # optimised graph are not, and nothing under the cache may be written.
    seeded = seeded_cache(directory, tmp_path, encoders["torch"].resolved.weights_sha256)
    command = [sys.executable, "-c", READ_ONLY_SERVE, MINILM, str(tmp_path)]
    if os.geteuid() == 0:
        # Root writes through file modes: mount the cache read-only in a namespace instead.
        if shutil.which("unshare") is None:
            pytest.skip("running as root without unshare(1): cannot make the cache read-only")
        mount = f"mount --bind {tmp_path} {tmp_path} && mount -o remount,ro,bind {tmp_path}"
        command = ["unshare", "-m", "sh", "-c", f'{mount} && exec "$@"', "sh", *command]
    else:
        for path in [tmp_path, *tmp_path.rglob("*")]:
            path.chmod(0o555 if path.is_dir() else 0o444)
    done = subprocess.run(
        command,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "XDG_CACHE_HOME": str(tmp_path / "elsewhere")},
    )
    for path in [tmp_path, *tmp_path.rglob("*")]:
        path.chmod(0o755)
    assert done.returncode == 0, done.stderr[-3000:]
    expected = encoders["onnx-int8"].backend_name
    assert f"SERVED={expected}" in done.stdout
    assert not (seeded / fidelity.VERDICTS_FOLDER).exists()
    if expected == "onnx-int8":
        assert "kept in memory only" in done.stderr
