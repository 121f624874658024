"""Train the demo head into the configured head store ahead of time: `python -m api.demo`.

The server only loads heads at start. When its store holds no head at all it trains
`demo` from data/demo_support.csv in a background thread (/predict answers 503 "being
trained" meanwhile); running this command at install time (after
`python -m embedder.prepare`) makes the first start serve at once. It reads the same
Settings as the server (EMBEDDER_*, REDIS_URL, HEAD_STORE / MODELS_DIR,
HEADS_SIGNING_KEY) and does nothing when a `demo` head exists, unless --force.
"""

import argparse
import sys
from typing import Any

from bertheads.settings import Settings


def train_demo_head(settings: Settings, *, force: bool = False) -> dict[str, Any] | None:
    """Train `demo` and publish it as a live version; None when it exists and not `force`."""
    from api.registry import DEMO_DATA, DEMO_HEAD, DEMO_OPTIONS
    from bertheads.connections import embedding_cache, head_store
    from classifier import artifacts, headfile
    from classifier.data import file_sha256, read_labelled
    from classifier.training import train_head
    from embedder import EmbeddingService, load_encoder

    store = head_store(settings)
    try:
        if store.versions(DEMO_HEAD) and not force:
            return None
        texts, labels = read_labelled(DEMO_DATA)
        encoder = load_encoder(settings.embedder_model, **settings.encoder_options())
        cache = embedding_cache(settings)
        vectors = EmbeddingService(encoder, cache).embed(texts, progress=True).vectors
        trained = train_head(vectors, labels, **DEMO_OPTIONS)
        info = encoder.describe()
        metadata = artifacts.build_metadata(trained, info, {DEMO_DATA.name: file_sha256(DEMO_DATA)})
        artifact = headfile.encode_head(trained.estimator, trained.spec, trained.thresholds, info)
        key = settings.heads_signing_key.get_secret_value() if settings.heads_signing_key else ""
        published = artifacts.publish(
            store,
            DEMO_HEAD,
            artifact,
            metadata,
            signing_key=key.encode() or None,
            versions_kept=settings.head_versions_kept,
            max_heads=settings.max_heads,
            only_if_absent=not force,
        )
        if published is None:
            return None
        record = published[0]
        return {"name": record.name, "version": record.version, "metrics": trained.metrics}
    finally:
        store.close()


def main(argv: list[str] | None = None) -> int:
    """Entry point: 0 when trained or already there, 2 on an error."""
    parser = argparse.ArgumentParser(prog="python -m api.demo", description=__doc__.split("\n")[0])
    parser.add_argument("--force", action="store_true", help="train a new version anyway")
    arguments = parser.parse_args(argv)
    from classifier.errors import ClassifierError
    from embedder.errors import EmbedderError

    settings = Settings()
    try:
        result = train_demo_head(settings, force=arguments.force)
    except (ClassifierError, EmbedderError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if result is None:
        print("a demo head exists already; nothing to do (--force trains a new version)")
        return 0
    accuracy = result["metrics"].get("accuracy")
    shown = f", held-out accuracy {accuracy:.3f}" if accuracy is not None else ""
    print(f"trained {result['name']} v{result['version']}{shown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
