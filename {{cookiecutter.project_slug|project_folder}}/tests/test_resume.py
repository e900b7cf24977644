"""A fit stopped by SIGTERM resumes from what it leaves, wherever the stop came: during a
training step, during validation, or during the final test."""

import json
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from helpers import (
    QUICK_FIT,
    EpochMetrics,
    Fit,
    LastCheckpointSteps,
    SigtermAtStep,
    callbacks_flag,
    command,
)
from pytorch_lightning.utilities.exceptions import SIGTERMException

from {{ cookiecutter.package_name }}.support.checkpoints import read_checkpoint
from {{ cookiecutter.package_name }}.train import DEFAULT_CONFIG
from {{ cookiecutter.package_name }}.training.callbacks import (
    BestCheckpoint,
    LastCheckpoint,
)

EPOCHS = 3


def train_command(data_flags: list[str], *extra: str) -> list[str]:
    return command(
        "train",
        *data_flags,
        *QUICK_FIT,
        f"--trainer.max_epochs={EPOCHS}",
        "--trainer.deterministic=true",
        *extra,
    )


# Dropout draws random numbers in every step: a resumed fit must draw the same ones.
DROPOUT = ["--trainer.logger=false", "--model.net.init_args.dropout=0.5"]


@pytest.fixture(scope="module")
def uninterrupted(fit: Fit, tmp_path_factory: pytest.TempPathFactory) -> dict[str, torch.Tensor]:
    """The final weights of the fit that the stopped ones are compared with."""
    workdir = tmp_path_factory.mktemp("uninterrupted")
    cli = fit(workdir, *DROPOUT)
    if not hasattr(cli.datamodule.train_dataloader(), "load_state_dict"):
        pytest.skip(
            "data.py's training loader keeps no position to resume mid-epoch from "
            "(support.loading.batch_loader's does)"
        )
    return read_checkpoint(workdir / "logs" / "checkpoints" / "last.ckpt")["state_dict"]


@pytest.mark.parametrize("stage", ["train", "validate"])
def test_a_fit_stopped_mid_epoch_resumes_to_the_same_weights(
    stage: str,
    fit: Fit,
    tmp_path: Path,
    steps_per_epoch: int,
    uninterrupted: dict[str, torch.Tensor],
) -> None:
    # Inside the second epoch's training, or in the first epoch's validation.
    step = steps_per_epoch + 3 if stage == "train" else steps_per_epoch
    with pytest.raises(SIGTERMException):
        fit(tmp_path, *DROPOUT, callbacks=[SigtermAtStep(step, stage)])
    last = tmp_path / "logs" / "checkpoints" / "last.ckpt"
    assert read_checkpoint(last)["global_step"] == step
    epochs = EpochMetrics()
    fit(tmp_path, *DROPOUT, "--ckpt_path=last", callbacks=[epochs])
    resumed = read_checkpoint(last)["state_dict"]
    assert all(torch.equal(resumed[name], uninterrupted[name]) for name in uninterrupted)
    validations = 2 if stage == "validate" else 1
    assert len(epochs.history) == validations, "a stopped validation is run again, whole"


def test_last_checkpoint_is_also_written_every_few_minutes_of_training(
    fit: Fit, tmp_path: Path
) -> None:
    # A hard kill (SIGKILL, a power cut) loses what was trained since last.ckpt was written.
    last = {"class_path": f"{LastCheckpoint.__module__}.LastCheckpoint"}
    config = yaml.safe_load(DEFAULT_CONFIG.read_text())["trainer"]["callbacks"]
    assert last | {"init_args": {"every_minutes": 30}} in config, "a sensible default"
    steps = LastCheckpointSteps()
    every_batch = json.dumps([last | {"init_args": {"every_minutes": 1e-9}}])
    flags = [
        "--trainer.logger=false",
        "--trainer.max_steps=5",
        f"--trainer.callbacks={every_batch}",
    ]
    fit(tmp_path, *flags, callbacks=[steps])
    assert steps.steps == {0: None, 1: 1, 2: 2, 3: 3, 4: 4}


def run_dirs(workdir: Path) -> list[Path]:
    return sorted(path.parent.parent for path in workdir.glob("logs/**/checkpoints/last.ckpt"))


def best_model_state(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """The best-model checkpoint callback's state (path and score of the best so far)."""
    [state] = [
        state
        for key, state in checkpoint["callbacks"].items()
        if key.startswith(BestCheckpoint.__name__)
    ]
    return state


def interrupt(command: list[str], workdir: Path, env: dict[str, str], before_signal=None) -> str:
    """Run ``command`` until its PauseForSignal callback waits, then send SIGTERM."""
    process = subprocess.Popen(
        command, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    for line in process.stdout:
        if "waiting for SIGTERM" in line:
            if before_signal:
                before_signal()
            process.send_signal(signal.SIGTERM)
            break
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode != 0, "the fit was not interrupted"
    assert "stopped by SIGTERM" in stderr
    return stdout + stderr


# (stage, epoch, batch) where the first fit is stopped; test runs after the last epoch.
STOPS = [("train", 1, 3), ("validate", 1, 1), ("test", EPOCHS, 1)]


@pytest.mark.slow
@pytest.mark.parametrize(("stage", "epoch", "batch"), STOPS, ids=[stop[0] for stop in STOPS])
def test_sigterm_leaves_a_run_that_resumes_to_the_same_end(
    stage: str,
    epoch: int,
    batch: int,
    data_flags: list[str],
    steps_per_epoch: int,
    tmp_path: Path,
    child_env: dict[str, str],
) -> None:
    pause = {
        "class_path": "helpers.PauseForSignal",
        "init_args": {"epoch": epoch, "batch": batch, "stage": stage},
    }
    final_weights = {}

    def keep_final_weights() -> None:  # before a stop during the test, last.ckpt is final
        final_weights.update(
            read_checkpoint(tmp_path / run_dirs(tmp_path)[0] / "checkpoints/last.ckpt")
        )

    pause_flag = callbacks_flag(pause)
    output = interrupt(
        train_command(data_flags, pause_flag),
        tmp_path,
        child_env,
        keep_final_weights if stage == "test" else None,
    )
    [run_dir] = run_dirs(tmp_path)
    last = run_dir / "checkpoints" / "last.ckpt"
    stopped = read_checkpoint(last)
    if stage == "train":  # saved where the step stopped, mid-epoch
        assert (stopped["epoch"], stopped["global_step"]) == (1, steps_per_epoch + 4)
    elif stage == "validate":  # the epoch's training is kept: the resumed fit validates it
        assert (stopped["epoch"], stopped["global_step"]) == (1, 2 * steps_per_epoch)
    else:  # the test loaded the best weights, but last.ckpt keeps the final ones
        final = final_weights["state_dict"]
        assert all(torch.equal(stopped["state_dict"][key], final[key]) for key in final)
    assert f"resume with --ckpt_path {last.relative_to(tmp_path)}" in output
    best_before = best_model_state(stopped)

    resumed = subprocess.run(
        train_command(data_flags, "--ckpt_path=last"),
        cwd=tmp_path,
        env=child_env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert f"resuming from {last.relative_to(tmp_path)}" in resumed.stdout
    assert run_dirs(tmp_path) == [run_dir], "the resumed run must continue in the same folder"
    finished = read_checkpoint(last)
    assert finished["global_step"] == EPOCHS * steps_per_epoch
    # The best model of the whole run: as good as the best before the stop, and the same
    # checkpoint unless a later epoch beat it.
    best_after = best_model_state(finished)
    assert best_after["best_model_score"] >= best_before["best_model_score"]
    if best_after["best_model_score"] == best_before["best_model_score"]:
        assert best_after["best_model_path"] == best_before["best_model_path"]
    summary = json.loads((run_dir / "test_metrics.json").read_text())
    assert summary["best_checkpoint"] == best_after["best_model_path"]
    if stage == "test":
        return
    reference = tmp_path / "uninterrupted"
    reference.mkdir()
    subprocess.run(train_command(data_flags), cwd=reference, env=child_env, check=True)
    [reference_run] = run_dirs(reference)
    expected = read_checkpoint(reference_run / "checkpoints" / "last.ckpt")["state_dict"]
    assert all(torch.equal(finished["state_dict"][key], value) for key, value in expected.items())
