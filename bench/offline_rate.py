"""Offline encode rates in a fresh process, configured from the environment like the server.

    EMBEDDER_BACKEND=onnx python bench/offline_rate.py --texts-file texts.json --plain

Reads a JSON list of texts; prints one JSON object: `encode_raw` texts/s of the encoder
these environment variables configure (same backend, fallback and batch size as the server,
in one call on every core: the backend's offline rate), and with --plain also
`SentenceTransformer.encode` (fp32, batch 32, max_seq_length 128). The bench scripts run it
before and after a server so a baseline shares the server's run and conditions without
sharing its process.
"""

import argparse
import json
import sys
import time
from pathlib import Path


def encode_raw_rate(texts: list[str]) -> tuple[float, str]:
    """Texts/s of the server's encoder over `texts` (one warm-up batch first) and its backend."""
    from bertheads.settings import Settings
    from embedder import load_encoder

    settings = Settings()
    # Every core on one call (no EMBEDDER_THREADS here): the backend's best offline rate.
    encoder = load_encoder(settings.embedder_model, **settings.encoder_options())
    encoder.encode_raw(texts[: settings.embedder_batch_size])
    started = time.perf_counter()
    encoder.encode_raw(texts, batch_size=settings.embedder_batch_size)
    return len(texts) / (time.perf_counter() - started), encoder.backend_name


def plain_rate(model: str, texts: list[str]) -> float:
    """Texts/s of `SentenceTransformer.encode` (fp32, batch 32, 128 tokens)."""
    from sentence_transformers import SentenceTransformer

    from embedder.resolve import resolve_model

    encoder = SentenceTransformer(str(resolve_model(model, None).path), device="cpu")
    encoder.max_seq_length = 128
    encoder.encode(texts[:32], batch_size=32)  # first-call allocations
    started = time.perf_counter()
    encoder.encode(texts, batch_size=32)
    return len(texts) / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts-file", type=Path, required=True)
    parser.add_argument("--plain", action="store_true", help="also plain SentenceTransformer")
    parser.add_argument("--model", default="sentence-transformers/all-mpnet-base-v2")
    arguments = parser.parse_args()
    texts = json.loads(arguments.texts_file.read_text())
    rate, backend = encode_raw_rate(texts)
    result = {"encode_raw_texts_per_s": round(rate, 2), "backend": backend}
    if arguments.plain:
        result["plain_texts_per_s"] = round(plain_rate(arguments.model, texts), 2)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
