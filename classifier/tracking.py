"""Optional MLflow logging of a training run; MLflow is an extra (bertheads[mlflow]).

Runs go to a local tracking store that current MLflow supports (SQLite; recent MLflow
refuses plain file stores by default) or to any tracking URI the user gives. The head is
logged as the plain files it is saved as (arrays + JSON), never as an MLflow model flavour,
which would pickle it.
"""

import importlib.util
import re
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from classifier.errors import OptionalDependencyError

INSTALL_HINT = "--mlflow needs MLflow, an optional extra: pip install 'bertheads[mlflow]'"
# MLflow accepts letters, digits and _ - . space / in metric and parameter names.
UNSAFE_NAME = re.compile(r"[^A-Za-z0-9_\-. /]")
MAX_PARAM_CHARS = 500


def require_mlflow() -> None:
    """Fail early, before any work, when --mlflow is asked for but MLflow is missing."""
    if importlib.util.find_spec("mlflow") is None:
        raise OptionalDependencyError(INSTALL_HINT)


def local_tracking_uri(directory: Path) -> str:
    """The SQLite tracking URI of a store kept in `directory` (created if missing)."""
    directory = Path(directory).resolve()
    directory.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{directory / 'mlflow.db'}"


def _safe_name(name: str) -> str:
    return UNSAFE_NAME.sub("_", name)[:250]


def numeric_metrics(metrics: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, float]]:
    """Every number in a nested metrics dict, with dotted names (per_class.billing.f1)."""
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, bool) or value is None:
            continue
        if isinstance(value, int | float):
            yield _safe_name(name), float(value)
        elif isinstance(value, Mapping):
            yield from numeric_metrics(value, f"{name}.")


def log_to_mlflow(
    tracking_uri: str,
    experiment: str,
    run_name: str,
    params: Mapping[str, Any],
    metrics: Mapping[str, Any],
    artifacts_dir: Path,
    tags: Mapping[str, str] | None = None,
) -> str:
    """Log parameters, every numeric metric and every file of `artifacts_dir` as one run.

    Args:
        tracking_uri: Where the runs go, e.g. `local_tracking_uri(Path("mlruns"))`.
        experiment: Experiment name (created on first use; a local SQLite store keeps its
            artifacts in an `artifacts/` folder beside the database).
        run_name: Name of the run.
        params: Hyper-parameters; values are logged as strings.
        metrics: Metrics, nested dicts allowed (logged with dotted names).
        artifacts_dir: Directory whose files (plots, metrics.json, the head's files) are logged.
        tags: Extra run tags (head name, version, vector-space fingerprint).

    Returns:
        The MLflow run id.

    """
    try:
        import mlflow
    except ImportError:
        raise OptionalDependencyError(INSTALL_HINT) from None
    client = mlflow.MlflowClient(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is not None:
        experiment_id = found.experiment_id
    else:
        location = None
        if tracking_uri.startswith("sqlite:///"):
            database = Path(tracking_uri.removeprefix("sqlite:///"))
            location = (database.parent / "artifacts").as_uri()
        experiment_id = client.create_experiment(experiment, artifact_location=location)
    run = client.create_run(experiment_id, run_name=run_name, tags=dict(tags or {}))
    run_id = run.info.run_id
    from mlflow.entities import Metric, Param

    logged_params = [
        Param(_safe_name(key), str(value)[:MAX_PARAM_CHARS]) for key, value in params.items()
    ]
    stamp = int(time.time() * 1000)
    logged_metrics = [Metric(key, value, stamp, 0) for key, value in numeric_metrics(metrics)]
    try:
        # log_batch takes at most 100 parameters and 1000 metrics per call.
        for start in range(0, len(logged_params), 100):
            client.log_batch(run_id, params=logged_params[start : start + 100])
        for start in range(0, len(logged_metrics), 1000):
            client.log_batch(run_id, metrics=logged_metrics[start : start + 1000])
        client.log_artifacts(run_id, str(artifacts_dir))
    except Exception:
        client.set_terminated(run_id, status="FAILED")
        raise
    client.set_terminated(run_id)
    return run_id
