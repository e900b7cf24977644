"""The pretrained backbone: weights read exactly from a file, a failed download in one line,
the backbone frozen and then trained at a lower rate, and a resumed fit ending with the same
weights in either phase. Nothing here reaches a hub: the "pretrained" weights are a small timm
model's own, saved to a file by the tests."""

import json
import subprocess
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import timm
import torch
from helpers import (
    PACKAGE,
    QUICK_FIT,
    TEST_BACKBONE,
    Fit,
    Run,
    command,
    read_rows,
    save_weights,
    write_png,
)
{%- if cookiecutter.serve == "yes" %}
from serving import running_server
{%- endif %}
from timm.models import adapt_input_conv

from {{ cookiecutter.package_name }}.inference.classifier import load_classifier
from {{ cookiecutter.package_name }}.inference.export import export
from {{ cookiecutter.package_name }}.inference.predict import predict
from {{ cookiecutter.package_name }}.model import ImageClassifier
from {{ cookiecutter.package_name }}.nets import Backbone
from {{ cookiecutter.package_name }}.support.checkpoints import read_checkpoint
from {{ cookiecutter.package_name }}.train import TrainCLI

NAME = TEST_BACKBONE
# Quick fits: one batch of each evaluation, no sanity check.
QUICK_EVALUATION = [
    "--trainer.limit_val_batches=1",
    "--trainer.limit_test_batches=1",
    "--trainer.num_sanity_val_steps=0",
]


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("weights") / f"{NAME}.safetensors"
    save_weights(path)
    return path


@pytest.fixture(scope="module")
def backbone_flags(weights_file: Path) -> list[str]:
    return [
        f"--model.net.init_args.name={NAME}",
        "--model.net.init_args.pretrained=true",
        f"--model.net.init_args.weights_file={weights_file}",
        *QUICK_EVALUATION,
    ]


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
@pytest.mark.parametrize("channels", [1, 3, 4])
def test_weights_file_is_loaded_exactly_with_timms_stem_and_a_new_head(
    suffix: str, channels: int, tmp_path: Path
) -> None:
    saved = save_weights(tmp_path / f"weights{suffix}")
    net = Backbone(
        channels, 5, (32, 32), name=NAME, weights_file=str(tmp_path / f"weights{suffix}")
    )
    loaded = net.model.state_dict()
    assert set(loaded) == set(saved)
    config = net.model.pretrained_cfg
    stem, head = f"{config['first_conv']}.weight", f"{config['classifier']}."
    for key, value in saved.items():
        if key == stem:  # summed (1 channel) or repeated (4) as timm adapts pretrained stems
            expected = adapt_input_conv(channels, value)
            assert torch.equal(loaded[key], expected), f"{key} is not the file's, adapted"
        elif key.startswith(head):  # a new classifier for 5 classes, not the file's 1000
            assert loaded[key].shape[0] == 5 != value.shape[0]
        else:
            assert torch.equal(loaded[key], value), f"{key} differs from the file's"


def test_pretrained_weights_bring_their_normalization_random_weights_take_the_datas(
    weights_file: Path,
) -> None:
    facts = {"class_names": ["a", "b"], "image_size": (32, 32), "mean": [9.0], "std": [7.0]}
    expected = timm.create_model(NAME).pretrained_cfg
    pretrained = ImageClassifier(
        channels=1, **facts, net=partial(Backbone, name=NAME, weights_file=str(weights_file))
    )
    # One channel: timm sums the stem's RGB weights, so the input takes the RGB mean.
    for buffer, key in ((pretrained.pixel_mean, "mean"), (pretrained.pixel_std, "std")):
        rgb_mean = sum(expected[key]) / 3 * 255
        assert buffer.flatten().tolist() == pytest.approx([rgb_mean])
    random = ImageClassifier(
        channels=1, **facts, net=partial(Backbone, name=NAME, pretrained=False)
    )
    assert (random.pixel_mean.flatten().tolist(), random.pixel_std.flatten().tolist()) == (
        [9.0],
        [7.0],
    )


def test_a_model_of_a_fixed_input_size_is_built_for_the_datas(tmp_path: Path) -> None:
    # A ViT pretrained at 224x224 pixels, here with random weights, trains on 32x32 images.
    vit = Backbone(1, 2, (32, 32), name="vit_tiny_patch16_224", pretrained=False)
    vit(torch.rand(2, 1, 32, 32)).logsumexp(dim=1).sum().backward()
    assert all(parameter.grad is not None for parameter in vit.parameters())
    # timm's test ViT, pretrained at 160x160: its position embeddings resampled to 32x48.
    save_weights(tmp_path / "vit.pth", "test_vit")
    vit = Backbone(3, 2, (32, 48), name="test_vit", weights_file=str(tmp_path / "vit.pth"))
    assert vit.model.patch_embed.grid_size == (32 // 16, 48 // 16)
    assert vit(torch.rand(2, 3, 32, 48)).shape == (2, 2)


def test_a_failed_download_is_one_line_naming_the_model_and_starts_no_run(
    data_flags: list[str], child_env: dict[str, str], tmp_path: Path
) -> None:
    empty = tmp_path / "empty-cache"
    # No hub is reachable offline, and the empty caches hold no weights.
    offline = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(empty), "HF_HUB_CACHE": str(empty)}
    completed = subprocess.run(
        command(
            "train",
            *data_flags,
            *QUICK_FIT,
            f"--model.net.init_args.name={NAME}",
            "--model.net.init_args.pretrained=true",
        ),
        cwd=tmp_path,
        env={**child_env, **offline, "TORCH_HOME": str(empty)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 1, completed.stderr[-2000:]
    assert "Traceback" not in completed.stderr
    [error] = [line for line in completed.stderr.splitlines() if line.startswith("error:")]
    assert f"weights of {NAME} could not be downloaded" in error
    assert "--model.net.init_args.weights_file" in error
    assert not (tmp_path / "logs").exists(), "a failed start leaves no run to resume"


@dataclass
class FileTrained:
    """A fit from a weights file since deleted: its checkpoint, test images (as tensors and
    PNG files), and the trained model's logits for them."""

    run: Run
    images: torch.Tensor
    files: list[Path]
    logits: torch.Tensor


@pytest.fixture(scope="module")
def file_trained(fit: Fit, tmp_path_factory: pytest.TempPathFactory) -> FileTrained:
    workdir = tmp_path_factory.mktemp("file-trained")
    weights = workdir / "weights.pth"
    save_weights(weights)
    flags = [f"--model.net.init_args.name={NAME}", "--model.net.init_args.pretrained=true"]
    flags += [f"--model.net.init_args.weights_file={weights}", *QUICK_EVALUATION]
    cli = fit(workdir, *flags, "--trainer.max_epochs=1", "--trainer.limit_train_batches=2")
    weights.unlink()
    cli.datamodule.setup("test")
    images = next(iter(cli.datamodule.test_dataloader()))[0][:8]
    with torch.no_grad():  # one epoch: the best checkpoint holds the fit's last weights
        logits = cli.model.cpu().eval()(images)
    (workdir / "images").mkdir()
    files = [write_png(image, workdir / "images" / f"{i}.png") for i, image in enumerate(images)]
    return FileTrained(Run(cli, workdir), images, files, logits)


def fetching_refused(*args: Any, **kwargs: Any) -> None:
    raise AssertionError("pretrained weights fetched for a network built from a checkpoint")


def test_predict_and_export_need_neither_the_weights_file_nor_the_hub(
    file_trained: FileTrained, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The file is gone; nor may the hub be asked.
    monkeypatch.setattr(timm.models._builder, "load_pretrained", fetching_refused)
    best, images, logits = file_trained.run.best, file_trained.images, file_trained.logits
    model, _ = load_classifier(best)
    # The pretrained normalization too, which the state dict does not hold.
    trained = file_trained.run.cli.model
    assert torch.equal(model.pixel_mean, trained.pixel_mean)
    assert torch.equal(model.pixel_std, trained.pixel_std)
    with torch.no_grad():
        assert torch.equal(model(images), logits)
    output = predict(best, file_trained.files[0].parent, tmp_path / "predictions.csv")
    confidence, class_index = logits.softmax(dim=1).max(dim=1)
    rows = read_rows(output)
    assert [int(row["class_index"]) for row in rows] == class_index.tolist()
    assert [float(row["confidence"]) for row in rows] == pytest.approx(confidence, abs=1e-6)
    program = torch.export.load(export(best, "pt2", tmp_path / "model.pt2")).module()
    assert torch.allclose(program(images.float()), logits, atol=1e-4)
{%- if cookiecutter.serve == "yes" %}


@pytest.mark.slow
def test_serve_needs_neither_the_weights_file_nor_the_hub(
    file_trained: FileTrained, child_env: dict[str, str], tmp_path: Path
) -> None:
    empty = tmp_path / "empty-cache"
    offline = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(empty), "TORCH_HOME": str(empty)}
    confidence, class_index = file_trained.logits.softmax(dim=1).max(dim=1)
    with running_server(file_trained.run.best, tmp_path, {**child_env, **offline}) as server:
        for index, file in enumerate(file_trained.files):
            answer = server.post_image(file.read_bytes())
            assert answer.status == 200, answer.body
            assert answer.body["class_index"] == class_index[index]
            assert answer.body["confidence"] == pytest.approx(float(confidence[index]), abs=1e-6)
{%- endif %}


class Watch(pl.Callback):
    """The network's weights at the start and after every epoch, and its groups' rates."""

    def __init__(self) -> None:
        self.states: list[dict[str, torch.Tensor]] = []
        self.rates: list[list[float]] = []

    def _keep(self, pl_module: pl.LightningModule) -> None:
        self.states.append({k: v.clone() for k, v in pl_module.net.state_dict().items()})

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._keep(pl_module)

    def on_train_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        self.rates.append([group["lr"] for group in trainer.optimizers[0].param_groups])

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._keep(pl_module)


class SeedEachEpoch(pl.Callback):
    """Seed each epoch's shuffle and augmentation by the epoch's number alone, however many
    epochs this process ran before (Lightning keeps no RNG state in checkpoints)."""

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch = trainer.current_epoch
        loader = trainer.train_dataloader
        # The shuffle draws its order from the sampler's generator when the epoch's first
        # batch is fetched; the loader's iterator, created before this hook in a fit's first
        # epoch and after it in later ones, draws from its own, not from the global RNG.
        loader.sampler.generator = torch.Generator().manual_seed(epoch)
        loader.generator = torch.Generator()
        torch.manual_seed(epoch)  # the augmentation, on the device


class StopAfterEpoch(pl.Callback):
    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch == self.epoch:
            trainer.should_stop = True


def last_checkpoint(workdir: Path) -> dict[str, Any]:
    [last] = workdir.glob("logs/**/checkpoints/last.ckpt")
    return read_checkpoint(last)


# The backbone frozen for two epochs of four, two batches each; of the config's callbacks only
# last.ckpt's, which the resumed fits start from.
FREEZE_EPOCHS = 2
CALLBACKS = [
    {"class_path": f"{PACKAGE}.training.callbacks.LastCheckpoint"},
    {
        "class_path": f"{PACKAGE}.training.finetuning.FreezeBackbone",
        "init_args": {"freeze_epochs": FREEZE_EPOCHS},
    },
]


@pytest.fixture(scope="module")
def fit_flags(backbone_flags: list[str]) -> list[str]:
    return [
        *backbone_flags,
        f"--trainer.callbacks={json.dumps(CALLBACKS)}",
        "--trainer.max_epochs=4",
        "--trainer.limit_train_batches=2",
        "--trainer.deterministic=true",
    ]


@pytest.fixture(scope="module")
def uninterrupted(
    fit: Fit, fit_flags: list[str], tmp_path_factory: pytest.TempPathFactory
) -> tuple[TrainCLI, Watch]:
    """A fit from start to end, and what it watched."""
    watch = Watch()
    cli = fit(
        tmp_path_factory.mktemp("uninterrupted"), *fit_flags, callbacks=[SeedEachEpoch(), watch]
    )
    return cli, watch


def test_backbone_is_frozen_for_the_first_epochs_then_trained_at_a_tenth_of_the_rate(
    uninterrupted: tuple[TrainCLI, Watch],
) -> None:
    cli, watch = uninterrupted
    config = cli.model.net.model.pretrained_cfg
    head, stem = f"model.{config['classifier']}.", f"model.{config['first_conv']}.weight"
    start, *_, frozen, trained = watch.states[: FREEZE_EPOCHS + 2]
    backbone = [key for key in start if not key.startswith(head)]
    # Frozen: no weight moves, and BatchNorm (eval mode) keeps its pretrained statistics.
    assert all(torch.equal(frozen[key], start[key]) for key in backbone)
    assert not torch.equal(frozen[f"{head}weight"], start[f"{head}weight"])
    changed = [key for key in backbone if not torch.equal(trained[key], frozen[key])]
    assert any(key.endswith("running_mean") for key in changed)
    assert stem in changed
    # The backbone's group runs at backbone_lr_ratio (0.1) of the classifier's, every step.
    assert all(rate == pytest.approx(0.1 * head_rate) for head_rate, rate in watch.rates)


def test_fits_resumed_in_the_frozen_and_in_the_trained_phase_keep_the_same_weights(
    fit: Fit, fit_flags: list[str], uninterrupted: tuple[TrainCLI, Watch], tmp_path: Path
) -> None:
    _, watch = uninterrupted
    fit(tmp_path, *fit_flags, callbacks=[SeedEachEpoch(), StopAfterEpoch(0)])
    # Stopped in the frozen phase, resumed to a frozen epoch, the unfreezing and a stop in the
    # trained phase; then resumed from there to the end.
    for stopped_after, stop_at, phase in (
        (0, FREEZE_EPOCHS, "frozen"),
        (FREEZE_EPOCHS, 3, "trained"),
    ):
        assert last_checkpoint(tmp_path)["epoch"] == stopped_after
        resume = [SeedEachEpoch(), StopAfterEpoch(stop_at)]
        fit(tmp_path, *fit_flags, "--ckpt_path=last", callbacks=resume)
        weights = last_checkpoint(tmp_path)["state_dict"]
        expected = {f"net.{key}": value for key, value in watch.states[stop_at + 1].items()}
        assert set(weights) >= set(expected)
        different = [key for key in expected if not torch.equal(weights[key], expected[key])]
        assert not different, f"resumed in the {phase} phase, these differ: {different[:5]}"
