"""DDP over two CPU processes (gloo): metrics of every image counted once across ranks, files
written once."""

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
{%- if cookiecutter.model == "backbone" %}
import torch
{%- endif %}
from helpers import {% if cookiecutter.model == "backbone" %}TEST_BACKBONE, {% endif %}command, read_rows{% if cookiecutter.model == "backbone" %}, save_weights{% endif %}

from {{ cookiecutter.package_name }}.data import ImageDataModule
from {{ cookiecutter.package_name }}.inference.classifier import load_classifier
from {{ cookiecutter.package_name }}.inference.predict import predict
{%- if cookiecutter.model == "backbone" %}
from {{ cookiecutter.package_name }}.support.checkpoints import read_checkpoint
{%- endif %}

TWO_CPU_PROCESSES = ["--accelerator=cpu", "--devices=2"]


@pytest.mark.slow
def test_ddp_fit_test_and_predict(
    data_args: dict[str, Any], data_flags: list[str], tmp_path: Path, child_env: dict[str, str]
) -> None:
{%- if cookiecutter.model == "backbone" %}
    # Pretrained from a file: the config's FreezeBackbone keeps the backbone frozen in the
    # first epoch (parameters without gradients, which DDP must be told of) and trains it in
    # the second, its gradients synchronized again.
    weights = tmp_path / "weights.pth"
    pretrained = save_weights(weights)
    network = [f"--model.net.init_args.name={TEST_BACKBONE}"]
    network += [f"--model.net.init_args.weights_file={weights}"]
{%- endif %}
    subprocess.run(
        [
            *command("train", *data_flags),
            *[f"--trainer.{flag[2:]}" for flag in TWO_CPU_PROCESSES],
            "--trainer.strategy=ddp",
            "--trainer.max_epochs=2",
            "--trainer.enable_progress_bar=false",
{%- if cookiecutter.model == "backbone" %}
            *network,
{%- endif %}
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
{%- if cookiecutter.model == "backbone" %}
    last = read_checkpoint(best.parent / "last.ckpt")["state_dict"]
    # Trained in the second epoch: every weight of the backbone's blocks moved.
    blocks = [key for key in pretrained if key.startswith("layer") and key.endswith("weight")]
    assert blocks
    assert not [key for key in blocks if torch.equal(last[f"net.model.{key}"], pretrained[key])]
{%- endif %}

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
