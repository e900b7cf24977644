"""Pieces switched by flag keep the run working: other loggers or none, how often they
write, fast_dev_run."""

import json
from pathlib import Path

import pytest
from helpers import EpochMetrics, Fit, StepValues, TimeUpAtStep, decoded_size, read_rows
from pytorch_lightning import Callback

from {{ cookiecutter.package_name }}.support.checkpoints import read_checkpoint

PICTURES = ("confusion_matrix.png", "misclassified.png")


@pytest.mark.parametrize("limit", ["max_steps", "max_time"])
def test_a_limit_reached_inside_an_epoch_ends_with_validation_checkpoints_and_test(
    limit: str, fit: Fit, tmp_path: Path, steps_per_epoch: int
) -> None:
    steps = steps_per_epoch + 3  # 3 batches into the second epoch
    epochs = EpochMetrics()
    callbacks: list[Callback] = [epochs]
    flags = ["--trainer.max_epochs=5"]
    if limit == "max_steps":
        flags.append(f"--trainer.max_steps={steps}")
    else:
        callbacks.append(TimeUpAtStep(steps))
    cli = fit(tmp_path, *flags, callbacks=callbacks)
    assert cli.trainer.global_step == steps
    assert len(epochs.history) == 2, "the partial epoch is validated too"
    [last] = tmp_path.glob("logs/**/checkpoints/last.ckpt")
    assert read_checkpoint(last)["global_step"] == steps
    assert (last.parent.parent / "test_metrics.json").is_file()


CSV_LOGGER = json.dumps(
    {
        "class_path": "pytorch_lightning.loggers.CSVLogger",
        "init_args": {"save_dir": "csv", "name": "by-flag"},
    }
)


@pytest.mark.parametrize(
    ("logger", "run_dir"),
    [("false", "logs"), (CSV_LOGGER, "csv/by-flag/version_0")],
    ids=["no-logger", "csv-logger"],
)
def test_logger_by_flag_keeps_the_run_and_its_pictures(
    fit: Fit, tmp_path: Path, logger: str, run_dir: str
) -> None:
    fit(tmp_path, f"--trainer.logger={logger}", "--trainer.max_epochs=1")
    for name in (*PICTURES, "test_metrics.json", "config.yaml"):
        assert (tmp_path / run_dir / name).is_file(), name
    assert decoded_size(tmp_path / run_dir / PICTURES[0]) == (600, 600)


def test_loggers_get_the_loss_and_learning_rate_of_the_steps_they_write(
    fit: Fit, tmp_path: Path
) -> None:
    every = 3
    steps = StepValues()
    flags = [f"--trainer.logger={CSV_LOGGER}", f"--trainer.log_every_n_steps={every}"]
    cli = fit(tmp_path, *flags, callbacks=[steps])
    recorded = steps.values
    rows = read_rows(tmp_path / "csv/by-flag/version_0/metrics.csv")
    rows = [row for row in rows if row["train/loss"]]
    logged = {int(row["step"]): (float(row["train/loss"]), float(row["train/lr"])) for row in rows}
    written = [step for step in range(cli.trainer.global_step) if (step + 1) % every == 0]
    assert sorted(logged) == written
    for step in written:
        assert logged[step] == pytest.approx(recorded[step], rel=1e-6), f"step {step}"


def test_fast_dev_run_tests_and_saves_no_checkpoint(fit: Fit, tmp_path: Path) -> None:
    cli = fit(tmp_path, "--trainer.fast_dev_run=true")
    assert cli.trainer.global_step == 1
    assert not list(tmp_path.rglob("*.ckpt"))
    assert (tmp_path / "logs" / "test_metrics.json").is_file()
