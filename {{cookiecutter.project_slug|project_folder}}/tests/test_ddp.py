"""DDP over two CPU processes (gloo): metrics of every image counted once across ranks, files
written once."""

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
from helpers import command, read_rows

from {{ cookiecutter.package_name }}.data import ImageDataModule
from {{ cookiecutter.package_name }}.inference.classifier import load_classifier
from {{ cookiecutter.package_name }}.inference.predict import predict

TWO_CPU_PROCESSES = ["--accelerator=cpu", "--devices=2"]


@pytest.mark.slow
def test_ddp_fit_test_and_predict(
    data_args: dict[str, Any], data_flags: list[str], tmp_path: Path, child_env: dict[str, str]
) -> None:
    subprocess.run(
        [
            *command("train", *data_flags),
            *[f"--trainer.{flag[2:]}" for flag in TWO_CPU_PROCESSES],
            "--trainer.strategy=ddp",
            "--trainer.max_epochs=2",
            "--trainer.enable_progress_bar=false",
        ],
        cwd=tmp_path,
        env=child_env,
        check=True,
        timeout=120,
    )
    [summary_file] = tmp_path.glob("logs/**/test_metrics.json")
    summary = json.loads(summary_file.read_text())
    best = tmp_path / summary["best_checkpoint"]
    assert {path.name for path in best.parent.iterdir()} == {best.name, "last.ckpt"}

    # One process over the whole test split must see what the two ranks reported together:
    # the sample's odd number of test images would count one twice with Lightning's sampler.
    single = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False)
    model, _ = load_classifier(best)
    [expected] = single.test(model, datamodule=ImageDataModule(**data_args))
    for name in ("test/loss", "test/acc", "test/f1"):
        assert summary[name] == pytest.approx(expected[name], abs=1e-6), name

    subprocess.run(
        [
            *command("inference.predict"),
            *TWO_CPU_PROCESSES,
            *[f"--ckpt_path={best}", f"--output={tmp_path / 'ddp.csv'}"],
        ],
        cwd=tmp_path,
        env=child_env,
        check=True,
        timeout=120,
    )
    single_rows = read_rows(predict(best, None, tmp_path / "single.csv", accelerator="cpu"))
    ddp_rows = read_rows(tmp_path / "ddp.csv")
    assert [row["source"] for row in ddp_rows] == [f"test/{i}" for i in range(len(single_rows))]
    assert [row["class_index"] for row in ddp_rows] == [row["class_index"] for row in single_rows]
    assert sorted(path.name for path in tmp_path.glob("*.csv*")) == ["ddp.csv", "single.csv"]
