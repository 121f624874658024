"""Classifier heads on frozen-encoder vectors: training, evaluation, saved artifacts.

Names are imported on first use (PEP 562), so `import classifier.headfile` (the serving
path) does not pull in scikit-learn or torch, which only training needs.
"""

import importlib
from typing import Any

_EXPORTS: dict[str, str] = {
    "HeadRecord": "classifier.artifacts",
    "list_heads": "classifier.artifacts",
    "load_head": "classifier.artifacts",
    "read_metadata": "classifier.artifacts",
    "save_head": "classifier.artifacts",
    "ClassifierError": "classifier.errors",
    "CorruptHeadError": "classifier.errors",
    "EmptyDataError": "classifier.errors",
    "FingerprintMismatchError": "classifier.errors",
    "HeadNotFoundError": "classifier.errors",
    "InputShapeError": "classifier.errors",
    "InvalidParameterError": "classifier.errors",
    "LegacyHeadError": "classifier.errors",
    "MissingColumnError": "classifier.errors",
    "OptionalDependencyError": "classifier.errors",
    "SingleClassError": "classifier.errors",
    "TrainingDataError": "classifier.errors",
    "UnknownFileTypeError": "classifier.errors",
    "UnsignedHeadError": "classifier.errors",
    "LogisticHead": "classifier.heads",
    "MLPHead": "classifier.heads",
    "LoadedHead": "classifier.loaded",
    "TaskSpec": "classifier.tasks",
    "encode_labels": "classifier.tasks",
    "TrainedHead": "classifier.training",
    "build_head": "classifier.training",
    "cross_validate_head": "classifier.training",
    "train_head": "classifier.training",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'classifier' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
