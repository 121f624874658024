"""Named exceptions of the classifier; the CLI turns them into exit code 2, the API into 4xx."""


class ClassifierError(Exception):
    """Base class of every error the classifier raises on purpose."""


class TrainingDataError(ClassifierError):
    """The labelled data cannot be used to train a head."""


class MissingColumnError(TrainingDataError):
    """A requested column is not in the data file."""


class SingleClassError(TrainingDataError):
    """Only one class (or a label with no positives at all) is present."""


class EmptyDataError(TrainingDataError):
    """The data file or array holds no rows."""


class TooManyRowsError(TrainingDataError):
    """The data has more rows than the caller allows; `limit` is that number."""

    def __init__(self, message: str, limit: int) -> None:
        super().__init__(message)
        self.limit = limit


class UnknownFileTypeError(TrainingDataError):
    """The data file's extension is not one we can read."""


class InvalidParameterError(ClassifierError):
    """A hyper-parameter or option is outside its allowed values."""


class InputShapeError(ClassifierError):
    """Vectors given to a head do not have the width it was trained on."""


class HeadNotFoundError(ClassifierError):
    """No saved head (or version) of that name exists."""


class CorruptHeadError(ClassifierError):
    """A saved head failed its checksum or its metadata cannot be read; it is never unpickled."""


class FingerprintMismatchError(ClassifierError):
    """The head was trained on vectors from a different encoder than the running one."""


class OptionalDependencyError(ClassifierError):
    """An optional extra (e.g. MLflow) is needed but not installed."""
