"""Optional MLflow logging; MLflow is an extra (bertheads[mlflow]), imported lazily."""

import importlib.util
from pathlib import Path
from typing import Any

from classifier.errors import OptionalDependencyError


def require_mlflow() -> None:
    """Fail early, before any work, when --mlflow is asked for but MLflow is missing."""
    if importlib.util.find_spec("mlflow") is None:
        raise OptionalDependencyError(
            "--mlflow needs MLflow, an optional extra: pip install 'bertheads[mlflow]'"
        )


def log_to_mlflow(
    tracking_dir: Path,
    experiment: str,
    run_name: str,
    params: dict[str, Any],
    metrics: dict[str, Any],
    artifacts_dir: Path,
) -> str:
    """Log parameters, numeric top-level metrics and every file of `artifacts_dir` to a local store.

    Args:
        tracking_dir: Directory of the local MLflow file store.
        experiment: Experiment name.
        run_name: Name of the run.
        params: Hyper-parameters (values are stringified by MLflow).
        metrics: Metrics; only top-level numbers are logged, the rest stays in metrics.json.
        artifacts_dir: Directory whose files become the run's artifacts.

    Returns:
        The MLflow run id.

    """
    try:
        import mlflow
    except ImportError:
        raise OptionalDependencyError(
            "--mlflow needs MLflow, an optional extra: pip install 'bertheads[mlflow]'"
        ) from None
    mlflow.set_tracking_uri(Path(tracking_dir).resolve().as_uri())
    mlflow.set_experiment(experiment)
    with mlflow.start_run(run_name=run_name) as run:
        mlflow.log_params({key: str(value) for key, value in params.items()})
        numbers = {
            key: float(value)
            for key, value in metrics.items()
            if isinstance(value, int | float) and not isinstance(value, bool)
        }
        mlflow.log_metrics(numbers)
        mlflow.log_artifacts(str(artifacts_dir))
        return str(run.info.run_id)
