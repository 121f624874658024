"""Named exceptions of the embedder; the API maps them to HTTP statuses."""


class EmbedderError(Exception):
    """Base class of every error the embedder raises on purpose."""


class ModelNotFoundError(EmbedderError):
    """No way of providing the configured model worked."""


class ModelIntegrityError(EmbedderError):
    """Packaged weights were found but did not verify."""


class InvalidConfigError(EmbedderError):
    """An encoder option is outside its allowed values."""


class UnfaithfulBackendError(InvalidConfigError):
    """A backend's vectors stray from fp32 on this machine: it is refused, never served."""


class QueueFullError(EmbedderError):
    """The encode queue is full; the caller should retry later."""

    def __init__(self, message: str, retry_after_seconds: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_seconds = retry_after_seconds
