"""--model.compile: the network trains compiled, and its checkpoints are the uncompiled
network's, for every command that loads one and for a resumed fit with or without it."""

from functools import partial
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
import torch._dynamo.utils
import torch._inductor.config
from helpers import Fit, exit_message, read_rows

from {{ cookiecutter.package_name }}.inference.classifier import load_classifier
from {{ cookiecutter.package_name }}.inference.export import export
from {{ cookiecutter.package_name }}.inference.predict import predict
from {{ cookiecutter.package_name }}.model import DATA_FACTS, ImageClassifier
from {{ cookiecutter.package_name }}.nets import network_class
from {{ cookiecutter.package_name }}.support.checkpoints import read_checkpoint
from {{ cookiecutter.package_name }}.train import main

# Whole batches only, one of each split: each batch size and mode is a graph to compile.
TRAIN_BATCHES = 4
FEW_BATCHES = [
    "--trainer.max_epochs=2",
    f"--trainer.limit_train_batches={TRAIN_BATCHES}",
    "--trainer.limit_val_batches=1",
    "--trainer.limit_test_batches=1",
]


class StopAfterFirstEpoch(pl.Callback):
    """Ends a fit planned for more epochs after its first, as an interruption would."""

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        trainer.should_stop = True


def uncompiled_state(hparams: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The state of a model built from the same settings without compiling."""
    net = hparams["net"]
    make_net = partial(network_class(net["class_path"]), **net.get("init_args", {}))
    facts = {fact: hparams[fact] for fact in DATA_FACTS}
    return ImageClassifier(**facts, net=make_net).state_dict()


@pytest.mark.slow
def test_compiled_fit_saves_the_uncompiled_networks_checkpoint(fit: Fit, tmp_path: Path) -> None:
    graphs_before = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    flags = ["--model.compile=true", *FEW_BATCHES]
    compiled = fit(tmp_path, *flags, callbacks=[StopAfterFirstEpoch()])
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > graphs_before, "not compiled"
    last = next(tmp_path.glob("logs/**/checkpoints/last.ckpt"))
    checkpoint = read_checkpoint(last)
    assert checkpoint["hyper_parameters"]["compile"] is True
    expected = uncompiled_state(dict(compiled.model.hparams))
    assert list(checkpoint["state_dict"]) == list(expected)
    for key, value in expected.items():
        assert checkpoint["state_dict"][key].shape == value.shape, key

    model, _ = load_classifier(last)
    images = next(iter(compiled.datamodule.test_dataloader()))[0][:5]
    with torch.no_grad():
        logits = model(images)
    rows = read_rows(predict(last, None, tmp_path / "predictions.csv", accelerator="cpu"))
    assert [int(row["class_index"]) for row in rows[:5]] == logits.argmax(dim=1).tolist()
    program = torch.export.load(str(export(last, "pt2", tmp_path / "model.pt2"))).module()
    torch.testing.assert_close(program(images.float()), logits, rtol=1e-4, atol=1e-4)

    # compile is no setting a resumed fit must keep: the run ends uncompiled.
    resumed = fit(tmp_path, *FEW_BATCHES, f"--ckpt_path={last}")
    assert resumed.trainer.global_step == 2 * TRAIN_BATCHES
    assert read_checkpoint(last)["hyper_parameters"]["compile"] is False


def test_compile_without_a_compiler_is_refused_in_one_line_before_the_run(
    data_flags: list[str], workdir: Path
) -> None:
    # Inductor's own patching: its config module has no attribute to put back afterwards.
    with torch._inductor.config.patch({"cpp.cxx": (None, str(workdir / "no-such-c++"))}):
        message = exit_message(main, [*data_flags, "--model.compile=true"])
    assert message.startswith("error: --model.compile true needs a C++ compiler"), message
    assert not list(workdir.iterdir()), "the refused run wrote files"
