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
    """A saved head failed its checks (checksum, signature, format) or cannot be read."""


class FingerprintMismatchError(ClassifierError):
    """The head was trained on vectors from a different encoder than the running one."""


class OptionalDependencyError(ClassifierError):
    """An optional extra (e.g. MLflow) is needed but not installed."""


class LegacyHeadError(CorruptHeadError):
    """A head saved in the old joblib (pickle) format; it is refused, never unpickled."""


class UnsignedHeadError(CorruptHeadError):
    """HEADS_SIGNING_KEY is set and a head carries no signature, or a wrong one."""


class LivePointerError(CorruptHeadError):
    """A head's live pointer is empty or unreadable; nothing rolls forward silently."""


class HeadStoreError(ClassifierError):
    """The head store failed (base class of the store's named errors)."""


class HeadStoreUnavailableError(HeadStoreError):
    """The head store cannot be reached (Redis down, folder unmounted)."""


class HeadStoreFullError(HeadStoreError):
    """The head store has no room left (ENOSPC on disk, OOM in Redis); nothing was saved."""


class HeadStoreConfigError(HeadStoreError):
    """The head store is set up in a way that can lose heads (e.g. an evicting Redis)."""


class HeadBusyError(HeadStoreError):
    """Another process holds the head's lock (a train, rollback or delete is committing)."""


class TooManyHeadsError(ClassifierError):
    """Saving would create one head more than MAX_HEADS allows."""


class PersistError(ClassifierError):
    """A component cannot be turned into plain arrays and JSON (a programming error)."""
