"""Classifier heads on frozen-encoder vectors: training, evaluation, saved artifacts."""

from classifier.artifacts import HeadRecord, list_heads, load_head, read_metadata, save_head
from classifier.errors import (
    ClassifierError,
    CorruptHeadError,
    EmptyDataError,
    FingerprintMismatchError,
    HeadNotFoundError,
    InputShapeError,
    InvalidParameterError,
    MissingColumnError,
    OptionalDependencyError,
    SingleClassError,
    TrainingDataError,
    UnknownFileTypeError,
)
from classifier.heads import LogisticHead, MLPHead
from classifier.loaded import LoadedHead
from classifier.tasks import TaskSpec, encode_labels
from classifier.training import TrainedHead, build_head, cross_validate_head, train_head

__all__ = [
    "ClassifierError",
    "CorruptHeadError",
    "EmptyDataError",
    "FingerprintMismatchError",
    "HeadNotFoundError",
    "HeadRecord",
    "InputShapeError",
    "InvalidParameterError",
    "LoadedHead",
    "LogisticHead",
    "MLPHead",
    "MissingColumnError",
    "OptionalDependencyError",
    "SingleClassError",
    "TaskSpec",
    "TrainedHead",
    "TrainingDataError",
    "UnknownFileTypeError",
    "build_head",
    "cross_validate_head",
    "encode_labels",
    "list_heads",
    "load_head",
    "read_metadata",
    "save_head",
    "train_head",
]
