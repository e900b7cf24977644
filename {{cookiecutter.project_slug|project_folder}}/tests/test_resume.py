"""A fit stopped by SIGTERM resumes from what it leaves, wherever the stop came: during a
training step, during validation, or during the final test."""

import json
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import QUICK_FIT, callbacks_flag, command

from {{ cookiecutter.package_name }}.data import ImageDataModule
from {{ cookiecutter.package_name }}.model import ImageClassifier
from {{ cookiecutter.package_name }}.support.checkpoints import read_checkpoint
from {{ cookiecutter.package_name }}.training.callbacks import BestCheckpoint

EPOCHS = 3
# Resuming mid-epoch restarts that epoch's shuffled order, so the two fits see the same
# images in a different order: their accuracies agree within this, not bit for bit.
ACCURACY_TOLERANCE = 0.05


def train_command(data_flags: list[str], *extra: str) -> list[str]:
    return command(
        "train",
        *data_flags,
        *QUICK_FIT,
        f"--trainer.max_epochs={EPOCHS}",
        "--trainer.deterministic=true",
        *extra,
    )


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


def val_accuracy(checkpoint: Path, data_args: dict[str, Any]) -> float:
    model = ImageClassifier.load_from_checkpoint(checkpoint, map_location="cpu").eval()
    datamodule = ImageDataModule(**data_args)
    datamodule.setup("fit")
    correct = total = 0
    with torch.no_grad():
        for images, labels in datamodule.val_dataloader():
            correct += (model(images).argmax(1) == labels).sum().item()
            total += len(labels)
    return correct / total


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
    data_args: dict[str, Any],
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
    elif stage == "validate":  # validation cannot resume halfway: the previous epoch end
        assert (stopped["epoch"], stopped["global_step"]) == (0, steps_per_epoch)
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
    if stage == "train":
        reference = tmp_path / "uninterrupted"
        reference.mkdir()
        subprocess.run(train_command(data_flags), cwd=reference, env=child_env, check=True)
        [reference_run] = run_dirs(reference)
        expected = val_accuracy(reference_run / "checkpoints" / "last.ckpt", data_args)
        assert val_accuracy(last, data_args) == pytest.approx(expected, abs=ACCURACY_TOLERANCE)
