"""A fit stopped by SIGTERM mid-epoch resumes from its last.ckpt and ends where an
uninterrupted fit ends."""

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from {{ cookiecutter.package_name }}.data import ImageDataModule
from {{ cookiecutter.package_name }}.model import ImageClassifier

# Resuming mid-epoch restarts that epoch's shuffled order, so the two fits see the same
# images in a different order: their accuracies agree within this, not bit for bit.
ACCURACY_TOLERANCE = 0.05


def train_command(data_flags: list[str], *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "{{ cookiecutter.package_name }}.train",
        *data_flags,
        "--trainer.max_epochs=3",
        "--trainer.accelerator=cpu",
        "--trainer.devices=1",
        "--trainer.deterministic=true",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        *extra,
    ]


def last_checkpoint(workdir: Path) -> Path:
    """The last.ckpt of the newest run in ``workdir``."""
    return max(workdir.glob("logs/**/checkpoints/last.ckpt"), key=lambda path: path.stat().st_mtime)


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


@pytest.mark.slow
def test_sigterm_mid_epoch_leaves_a_checkpoint_that_resumes(
    data_args: dict[str, Any],
    data_flags: list[str],
    steps_per_epoch: int,
    tmp_path: Path,
    child_env: dict[str, str],
) -> None:
    # The resumed fit runs where the interrupted one did, as a user would resume it.
    workdir, uninterrupted = tmp_path / "interrupted", tmp_path / "uninterrupted"
    workdir.mkdir()
    uninterrupted.mkdir()

    pause = {"class_path": "helper_callbacks.PauseForSignal", "init_args": {"epoch": 1, "batch": 3}}
    process = subprocess.Popen(
        train_command(data_flags, f"--trainer.callbacks={json.dumps([pause])}"),
        cwd=workdir,
        env=child_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    for line in process.stdout:
        if "waiting for SIGTERM" in line:
            process.send_signal(signal.SIGTERM)
            break
    _, stderr = process.communicate(timeout=120)
    assert process.returncode != 0
    assert "stopped by SIGTERM" in stderr

    interrupted = last_checkpoint(workdir)
    checkpoint = torch.load(interrupted, map_location="cpu", weights_only=True)
    assert checkpoint["epoch"] == 1
    assert checkpoint["global_step"] == steps_per_epoch + 4

    resume = f"--ckpt_path={interrupted}"
    subprocess.run(train_command(data_flags, resume), cwd=workdir, env=child_env, check=True)
    subprocess.run(train_command(data_flags), cwd=uninterrupted, env=child_env, check=True)

    resumed = last_checkpoint(workdir)
    finished = torch.load(resumed, map_location="cpu", weights_only=True)
    reference = torch.load(last_checkpoint(uninterrupted), map_location="cpu", weights_only=True)
    assert finished["global_step"] == reference["global_step"] == 3 * steps_per_epoch
    assert val_accuracy(resumed, data_args) == pytest.approx(
        val_accuracy(last_checkpoint(uninterrupted), data_args), abs=ACCURACY_TOLERANCE
    )
