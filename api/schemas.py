"""Request and response bodies; lists of floats exist only here, at the edge."""

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from api.validation import CleanStr, LabelStr, usable_label


class EmbedRequest(BaseModel):
    """Body of POST /embed."""

    model_config = ConfigDict(extra="forbid")

    texts: str | list[str] = Field(description="One text or a list of texts.")
    normalize: bool | None = Field(None, description="L2-normalise; default: the server's.")


class EmbedResponse(BaseModel):
    """Vectors in request order."""

    model: str
    dim: int
    embeddings: list[list[float]]
    cached: int = Field(description="Texts served from the cache.")
    truncated: int = Field(description="Texts cut to max_seq_len tokens.")


class PredictRequest(BaseModel):
    """Body of POST /predict."""

    model_config = ConfigDict(extra="forbid")

    texts: str | list[str]
    head: CleanStr | None = Field(
        None, description="Head name; default: the server's default head."
    )


class Prediction(BaseModel):
    """One text's prediction: `label` for single-label heads, `labels` for multi-label ones."""

    label: str | None = None
    labels: list[str] | None = None
    probabilities: dict[str, float]


class PredictResponse(BaseModel):
    """Predictions in request order, with the head version that made them."""

    head: str
    version: int
    predictions: list[Prediction]


class Example(BaseModel):
    """One labelled text: `label` (binary / multi-class) or `labels` (multi-label)."""

    model_config = ConfigDict(extra="forbid")

    text: str
    label: str | int | None = None
    labels: list[LabelStr] | None = None

    @field_validator("label")
    @classmethod
    def _label_is_usable(cls, value: str | int | None) -> str | int | None:
        # Checked here, not as an Annotated member of the union, so the error names
        # `examples.N.label` rather than the union branch that failed.
        return usable_label(value) if isinstance(value, str) else value


class TrainRequest(BaseModel):
    """Body of POST /heads/{name}/train: inline examples or a server-side file."""

    model_config = ConfigDict(extra="forbid")

    examples: list[Example] | None = None
    file: str | None = Field(None, description="File name inside the server's TRAIN_DATA_DIR.")
    text_col: CleanStr = "text"
    label_col: CleanStr = "label"
    label_cols: list[LabelStr] | None = None
    head: Literal["auto", "logreg", "mlp", "svm"] | None = Field(
        None,
        description="auto (the default): search head families by cross-validation within "
        "budget_seconds and keep the best; logreg or mlp on the vectors; logreg or svm for "
        "lexical / hybrid. Unset with an option only a named head takes (loss, features, "
        "...): logreg, as before auto existed.",
    )
    budget_seconds: float | None = Field(
        None,
        gt=0,
        le=3600,
        description="auto only: seconds the search may start candidates in "
        "(default TRAIN_BUDGET_SECONDS); must stay under TRAIN_TIMEOUT_SECONDS.",
    )
    features: Literal["embedding", "lexical", "hybrid"] = Field(
        "embedding",
        description="What the head reads: the encoder's vectors (embedding), TF-IDF of the "
        "texts (lexical; /predict then never calls the encoder), or both in one linear "
        "model (hybrid).",
    )
    vector_weight: float | None = Field(
        None, gt=0, le=100, description="Hybrid only: weight of the vector block (default 1)."
    )
    loss: Literal["ce", "focal"] = "ce"
    gamma: float = Field(2.0, ge=0, le=10)
    alpha: float | None = Field(None, gt=0, lt=1)
    class_weight: Literal["balanced"] | None = None
    resample: Literal["none", "over", "under"] = "none"
    test_size: float = Field(0.2, gt=0, lt=0.9)
    seed: int = Field(0, ge=0, le=2**32 - 1, description="Seeds splits and training.")
    replace_labels: bool = Field(False, description="Allow a label set unlike the live version's.")


class RollbackRequest(BaseModel):
    """Body of POST /heads/{name}/rollback; no version means the previous one."""

    model_config = ConfigDict(extra="forbid")

    version: int | None = Field(None, ge=1)


class HealthResponse(BaseModel):
    """Liveness and what is loaded."""

    status: Literal["ok", "degraded"]
    model: str
    dim: int
    fingerprint: str
    backend: Literal["torch", "onnx", "onnx-int8"] = Field(description="The backend serving.")
    fallback_reason: str | None = Field(
        description="Why the configured backend is not the one serving (it failed the "
        "fidelity gate on this machine); null when it is."
    )
    device: Literal["cpu", "cuda"]
    encode_workers: str = Field(
        description="Encode threads running / started, e.g. 2/2; fewer running is degraded."
    )
    cache: Literal["up", "degraded", "down"] = Field(
        description="degraded: some Redis Cluster masters do not answer; their keys are "
        "served uncached."
    )
    cache_problem: str | None = Field(
        None, description="What part of the cache is down and why; null while it all answers."
    )
    heads: list[str]
    default_head: str | None
    head_store: Literal["up", "down"] = "up"
    head_problems: dict[str, str] = Field(
        default_factory=dict, description="Heads (or their live version) that cannot serve, why."
    )
    long_texts: dict[str, str | int] = Field(
        default_factory=dict,
        description="How texts over max_seq_len tokens are read: mode truncate or windows "
        "(with max_windows, overlap_tokens, window_tokens).",
    )
