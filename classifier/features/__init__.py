"""Lexical features: TF-IDF of the texts as a head's input, alone or beside the vectors.

Serving classes (`TfidfTransform`, `LinearTextModel`) use numpy and the stdlib only;
the heads that fit them (`LexicalHead`, `HybridHead`) use scikit-learn. Names are
imported on first use (PEP 562), so loading a saved head never imports scikit-learn.
"""

import importlib
from typing import Any

_EXPORTS: dict[str, str] = {
    "HybridHead": "classifier.features.fitting",
    "LexicalHead": "classifier.features.fitting",
    "make_hybrid_head": "classifier.features.fitting",
    "make_lexical_head": "classifier.features.fitting",
    "LinearTextModel": "classifier.features.linear",
    "SparseRows": "classifier.features.tfidf",
    "TfidfBlock": "classifier.features.tfidf",
    "TfidfTransform": "classifier.features.tfidf",
}
FEATURES: tuple[str, ...] = ("embedding", "lexical", "hybrid")

__all__ = sorted([*_EXPORTS, "FEATURES"])


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'classifier.features' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
