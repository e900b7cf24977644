"""Seeded fits reproduce exactly; a diverging fit stops without saving the broken model; a
fit that fails before its first step leaves nothing that looks resumable."""

from pathlib import Path

import pytest
import torch
from helpers import EpochMetrics, FailAtTrainStart, Fit, PoisonWeights

from {{ cookiecutter.package_name }}.support.errors import NonFiniteLossError


def test_same_seed_and_deterministic_give_identical_epochs(fit: Fit, tmp_path: Path) -> None:
    runs = []
    for name in ("first", "second"):
        (tmp_path / name).mkdir()
        metrics = EpochMetrics()
        flags = ["--trainer.deterministic=true", "--seed_everything=7"]
        cli = fit(tmp_path / name, *flags, callbacks=[metrics])
        runs.append((metrics.history, cli.model.state_dict()))
    (first_history, first_weights), (second_history, second_weights) = runs
    assert len(first_history) == 2 and "val/loss" in first_history[0]
    assert first_history == second_history
    assert all(torch.equal(first_weights[k], second_weights[k]) for k in first_weights)


def test_non_finite_loss_stops_the_fit_and_saves_no_broken_checkpoint(
    fit: Fit, tmp_path: Path, steps_per_epoch: int
) -> None:
    step = steps_per_epoch + 4
    with pytest.raises(NonFiniteLossError, match=f"the training loss became nan at step {step}"):
        fit(tmp_path, callbacks=[PoisonWeights(step)])
    checkpoints = sorted(tmp_path.glob("logs/**/*.ckpt"))
    assert {path.name for path in checkpoints} >= {"last.ckpt"}
    assert any(path.name.startswith("epoch00-") for path in checkpoints)
    for path in checkpoints:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        assert checkpoint["global_step"] == steps_per_epoch, (
            f"{path.name} was saved after the loss diverged"
        )
        assert all(weights.isfinite().all() for weights in checkpoint["state_dict"].values())


def test_failure_before_the_first_step_leaves_no_checkpoint(
    fit: Fit, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(RuntimeError, match="failing on purpose"):
        fit(tmp_path, callbacks=[FailAtTrainStart()])
    assert not list(tmp_path.glob("logs/**/*.ckpt"))
    captured = capsys.readouterr()
    assert "resume" not in captured.out + captured.err
