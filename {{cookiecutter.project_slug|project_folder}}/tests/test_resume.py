"""A fit stopped by SIGTERM mid-epoch resumes from its last.ckpt and ends where an
uninterrupted fit ends."""

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from {{ cookiecutter.package_name }}.data import ImageDataModule
from {{ cookiecutter.package_name }}.model import ImageClassifier

STEPS_PER_EPOCH = 16  # 512 training images, batches of 32
# Resuming mid-epoch restarts that epoch's shuffled order, so the two fits see the same
# images in a different order: their accuracies agree within this, not bit for bit.
ACCURACY_TOLERANCE = 0.05


def train_command(mnist_dir: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "{{ cookiecutter.package_name }}.train",
        f"--data.data_dir={mnist_dir}",
        "--data.val_size=128",
        "--data.batch_size=32",
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


def val_accuracy(checkpoint: Path, mnist_dir: Path) -> float:
    model = ImageClassifier.load_from_checkpoint(checkpoint, map_location="cpu").eval()
    datamodule = ImageDataModule(data_dir=str(mnist_dir), val_size=128)
    datamodule.setup("fit")
    val = datamodule.datasets["val"]
    images, labels = datamodule.on_after_batch_transfer((val.images, val.targets), 0)
    with torch.no_grad():
        return (model(images).argmax(1) == labels).float().mean().item()


@pytest.mark.slow
def test_sigterm_mid_epoch_leaves_a_checkpoint_that_resumes(
    mnist_dir: Path, tmp_path: Path, child_env: dict[str, str]
) -> None:
    # The resumed fit runs where the interrupted one did, as a user would resume it.
    workdir, uninterrupted = tmp_path / "interrupted", tmp_path / "uninterrupted"
    workdir.mkdir()
    uninterrupted.mkdir()

    pause = {"class_path": "helper_callbacks.PauseForSignal", "init_args": {"epoch": 1, "batch": 3}}
    process = subprocess.Popen(
        train_command(mnist_dir, f"--trainer.callbacks={json.dumps([pause])}"),
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
    checkpoint = torch.load(interrupted, map_location="cpu")
    assert checkpoint["epoch"] == 1
    assert checkpoint["global_step"] == STEPS_PER_EPOCH + 4

    resume = f"--ckpt_path={interrupted}"
    subprocess.run(train_command(mnist_dir, resume), cwd=workdir, env=child_env, check=True)
    subprocess.run(train_command(mnist_dir), cwd=uninterrupted, env=child_env, check=True)

    resumed = last_checkpoint(workdir)
    finished = torch.load(resumed, map_location="cpu")
    reference = torch.load(last_checkpoint(uninterrupted), map_location="cpu")
    assert finished["global_step"] == reference["global_step"] == 3 * STEPS_PER_EPOCH
    assert val_accuracy(resumed, mnist_dir) == pytest.approx(
        val_accuracy(last_checkpoint(uninterrupted), mnist_dir), abs=ACCURACY_TOLERANCE
    )
