"""Each logger option records a real short fit where that logger keeps its files."""

from pathlib import Path

import pytest
from bakes import TEMPLATE_DIR, train_in, write_sample

# A file that proves the logger recorded the fit, relative to the project.
METRICS = {
    "tensorboard": "logs/mnist-lab/version_0/events.out.tfevents.*",
    "csv": "logs/mnist-lab/version_0/metrics.csv",
    "wandb": "logs/wandb/offline-run-*/run-*.wandb",
    "mlflow": "logs/mlruns/*/*/metrics/val/acc",
}
# Where the resolved config lands, and a text it must hold (W&B's offline log is binary).
CONFIG = {
    "csv": ("logs/mnist-lab/version_0/hparams.yaml", "max_epochs"),
    "wandb": ("logs/wandb/offline-run-*/run-*.wandb", "max_epochs"),
    "mlflow": ("logs/mlruns/*/*/params/config/trainer/max_epochs", "1"),
}
# Loggers that take images receive the test report's confusion matrix.
IMAGES = {
    "wandb": "logs/wandb/offline-run-*/files/media/images/test/confusion_matrix_*.png",
    "mlflow": "logs/mlruns/*/*/artifacts/confusion_matrix.png",
}


@pytest.mark.slow
@pytest.mark.parametrize("logger", sorted(METRICS))
def test_logger_records_a_fit(cookies, logger: str, tmp_path: Path) -> None:
    result = cookies.bake(extra_context={"logger": logger}, template=str(TEMPLATE_DIR))
    project = result.project_path
    data_args = write_sample(project, tmp_path / "data")
    completed = train_in(
        project, data_args, "--trainer.max_epochs=1", env={"WANDB_MODE": "offline"}
    )
    assert list(project.glob(METRICS[logger])), f"no {METRICS[logger]}"
    # Not a terminal: no progress bar, one line of metrics per epoch instead.
    assert "epoch 1/1 " in completed.stdout and "val/acc=" in completed.stdout
    if logger in CONFIG:
        pattern, text = CONFIG[logger]
        [config] = project.glob(pattern)
        assert text.encode() in config.read_bytes(), f"the resolved config did not reach {logger}"
    if logger in IMAGES:
        assert list(project.glob(IMAGES[logger])), f"no {IMAGES[logger]}"
