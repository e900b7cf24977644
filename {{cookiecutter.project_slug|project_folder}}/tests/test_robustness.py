"""Seeded fits reproduce exactly, and a diverging fit stops without saving the broken model."""

import json
from pathlib import Path

import pytest
import torch
from helper_callbacks import EpochMetrics

from {{ cookiecutter.package_name }}.callbacks import NonFiniteLossError
from {{ cookiecutter.package_name }}.train import TrainCLI, train


def short_fit(mnist_dir: Path, workdir: Path, *extra: str) -> TrainCLI:
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(workdir)
        return train(
            [
                f"--data.data_dir={mnist_dir}",
                "--data.val_size=128",
                "--data.batch_size=32",
                "--trainer.max_epochs=2",
                "--trainer.accelerator=cpu",
                "--trainer.devices=1",
                "--trainer.enable_progress_bar=false",
                "--trainer.enable_model_summary=false",
                *extra,
            ]
        )


def test_same_seed_and_deterministic_give_identical_epochs(mnist_dir: Path, tmp_path: Path) -> None:
    record = json.dumps([{"class_path": "helper_callbacks.EpochMetrics"}])
    runs = []
    for name in ("first", "second"):
        (tmp_path / name).mkdir()
        cli = short_fit(
            mnist_dir,
            tmp_path / name,
            "--trainer.deterministic=true",
            "--seed_everything=7",
            f"--trainer.callbacks={record}",
        )
        [metrics] = [c for c in cli.trainer.callbacks if isinstance(c, EpochMetrics)]
        runs.append((metrics.history, cli.model.state_dict()))
    (first_history, first_weights), (second_history, second_weights) = runs
    assert len(first_history) == 2 and "val/loss" in first_history[0]
    assert first_history == second_history
    assert all(torch.equal(first_weights[k], second_weights[k]) for k in first_weights)


def test_non_finite_loss_stops_the_fit_and_saves_no_broken_checkpoint(
    mnist_dir: Path, tmp_path: Path
) -> None:
    poison = {"class_path": "helper_callbacks.PoisonWeights", "init_args": {"step": 20}}
    with pytest.raises(NonFiniteLossError, match="the training loss became nan at step 20"):
        short_fit(mnist_dir, tmp_path, f"--trainer.callbacks={json.dumps([poison])}")
    checkpoints = sorted(tmp_path.glob("logs/**/*.ckpt"))
    assert {path.name for path in checkpoints} >= {"last.ckpt"}
    assert any(path.name.startswith("epoch00-") for path in checkpoints)
    for path in checkpoints:
        checkpoint = torch.load(path, map_location="cpu")
        assert checkpoint["global_step"] == 16, f"{path.name} was saved after the loss diverged"
        assert all(weights.isfinite().all() for weights in checkpoint["state_dict"].values())
