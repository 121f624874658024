"""The default 768-d model, resolved offline from its PyPI packages."""

import numpy as np

from bertheads.settings import Settings
from embedder import load_encoder


def test_default_mpnet_shape_and_meaning():
    encoder = load_encoder(Settings().embedder_model)
    assert encoder.resolved.source in ("package", "local", "hub")
    assert encoder.max_seq_len == 128 and encoder.model_max_seq_len == 384
    texts = [
        "A man is playing a guitar on stage.",
        "Someone performs music with a guitar.",
        "The central bank raised interest rates again.",
    ]
    vectors = encoder.encode(texts, normalize=True)
    assert vectors.shape == (3, 768) and vectors.dtype == np.float32
    paraphrase, unrelated = vectors[0] @ vectors[1], vectors[0] @ vectors[2]
    assert paraphrase > unrelated + 0.3, (paraphrase, unrelated)
