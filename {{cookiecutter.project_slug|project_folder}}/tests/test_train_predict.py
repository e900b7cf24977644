"""A short real fit on the data module's sample, its checkpoints, and predictions from them."""

import json
from collections.abc import Iterable
from pathlib import Path

import pytest
import torch
from helpers import QUICK_FIT, Fit, Run, decoded_size, read_rows, write_png

from {{ cookiecutter.package_name }}.inference.classifier import load_classifier
from {{ cookiecutter.package_name }}.inference.predict import main, predict
from {{ cookiecutter.package_name }}.model import ImageClassifier, schedule_basis
from {{ cookiecutter.package_name }}.support.checkpoints import read_checkpoint
from {{ cookiecutter.package_name }}.support.errors import CheckpointError
from {{ cookiecutter.package_name }}.support.images import read_image
from {{ cookiecutter.package_name }}.train import TrainCLI


@pytest.fixture(scope="module")
def test_batch(trained: Run) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole test split as one batch of uint8 images and labels."""
    datamodule = trained.cli.datamodule
    datamodule.setup("test")
    pairs = list(datamodule.test_dataloader())
    return torch.cat([images for images, _ in pairs]), torch.cat([labels for _, labels in pairs])


def probabilities(checkpoint: Path, images: torch.Tensor) -> torch.Tensor:
    model, _ = load_classifier(checkpoint)
    with torch.no_grad():
        return model(images).softmax(dim=1)


def accuracy(model: ImageClassifier, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> float:
    correct = total = 0
    with torch.no_grad():
        for images, labels in batches:
            correct += int((model(images).argmax(dim=1) == labels).sum())
            total += len(labels)
    return correct / total


def test_fit_writes_checkpoints_config_and_test_metrics(trained: Run) -> None:
    assert trained.best.is_file() and (trained.best.parent / "last.ckpt").is_file()
    assert (trained.log_dir / "config.yaml").is_file()
    summary = json.loads((trained.log_dir / "test_metrics.json").read_text())
    assert trained.workdir / summary["best_checkpoint"] == trained.best
    assert summary["test/acc"] > 0.9, "the sample is easy to learn: the fit did not learn"
    assert summary["test/f1"] == pytest.approx(summary["test/acc"], abs=0.1)
    versions = json.loads((trained.log_dir / "versions.json").read_text())
    assert torch.__version__.startswith(versions["torch"]) and versions["lightning-template"]
    assert not list(trained.workdir.rglob("*.partial*")), "a write left its partial file"


def test_logged_metrics_are_the_models_on_each_whole_split(fit: Fit, tmp_path: Path) -> None:
    # One epoch after a sanity check: batches of the sanity check, of another epoch or of
    # another split counted in would change the figures.
    cli = fit(tmp_path, "--trainer.max_epochs=1", "--trainer.num_sanity_val_steps=2")
    checkpoint = cli.config_init["checkpoint"]
    model, _ = load_classifier(tmp_path / checkpoint.best_model_path)
    datamodule = cli.datamodule
    datamodule.setup("test")
    val_acc = accuracy(model, datamodule.val_dataloader())
    assert float(checkpoint.best_model_score) == pytest.approx(val_acc, abs=1e-6)
    summary = json.loads((tmp_path / cli.trainer.log_dir / "test_metrics.json").read_text())
    assert summary["test/acc"] == pytest.approx(
        accuracy(model, datamodule.test_dataloader()), abs=1e-6
    )
    images, labels = map(torch.cat, zip(*datamodule.test_dataloader(), strict=True))
    with torch.no_grad():
        loss = torch.nn.functional.cross_entropy(model(images), labels)
    assert summary["test/loss"] == pytest.approx(float(loss), abs=1e-5), "a mean over images"


def test_a_fit_records_the_schedule_basis_a_resume_computes_before_its_fit(
    fit: Fit, data_flags: list[str], tmp_path: Path
) -> None:
    flags = ["--trainer.accumulate_grad_batches=3", "--trainer.limit_train_batches=0.7"]
    cli = fit(tmp_path, *flags, "--trainer.max_epochs=1")
    recorded = read_checkpoint(tmp_path / cli.config_init["checkpoint"].best_model_path)
    again = TrainCLI([*data_flags, *QUICK_FIT, *flags, "--trainer.max_epochs=1"])
    again.datamodule.setup("fit")
    assert recorded["schedule_basis"] == schedule_basis(again.trainer, again.datamodule)
    assert recorded["schedule_basis"]["trainer.accumulate_grad_batches"] == 3


def test_checkpoints_keep_the_data_facts_and_load_weights_only(trained: Run) -> None:
    datamodule = trained.cli.datamodule
    for path in (trained.best, trained.best.parent / "last.ckpt"):
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        hparams = checkpoint["hyper_parameters"]
        assert list(hparams["class_names"]) == list(datamodule.class_names)
        assert hparams["channels"] == datamodule.channels
        assert list(hparams["image_size"]) == list(datamodule.image_size)
        assert list(hparams["mean"]) == pytest.approx(list(datamodule.mean))
        assert hparams["optimizer"]["class_path"].startswith("torch.optim.")


def test_test_report_pictures_decode(trained: Run) -> None:
    for name in ("confusion_matrix.png", "misclassified.png"):
        assert decoded_size(trained.log_dir / name) == (600, 600), name


def test_checkpoint_reload_gives_identical_outputs(trained: Run, test_batch: tuple) -> None:
    images, _ = test_batch
    reloaded, _ = load_classifier(trained.best)
    tested = ImageClassifier.load_from_checkpoint(trained.best, map_location="cpu").eval()
    with torch.no_grad():
        assert torch.equal(reloaded(images), tested(images))


def test_predict_test_split_matches_the_model(
    trained: Run, test_batch: tuple, tmp_path: Path
) -> None:
    output = predict(trained.best, None, tmp_path / "out" / "test.csv", accelerator="cpu")
    rows = read_rows(output)
    images, _ = test_batch
    assert [row["source"] for row in rows] == [f"test/{i}" for i in range(len(images))]
    expected = probabilities(trained.best, images)
    assert [int(row["class_index"]) for row in rows] == expected.argmax(1).tolist()
    names = trained.cli.datamodule.class_names
    assert [row["class_name"] for row in rows] == [names[i] for i in expected.argmax(1)]
    confidences = torch.tensor([float(row["confidence"]) for row in rows])
    assert torch.allclose(confidences, expected.max(1).values, atol=1e-5)
    assert sorted(path.name for path in output.parent.iterdir()) == ["test.csv"]


def test_predict_on_image_files_matches_the_model(
    trained: Run, test_batch: tuple, tmp_path: Path
) -> None:
    images, _ = test_batch
    assert images.shape[1] in (1, 3), "PNG files hold one or three channels"
    folder = tmp_path / "images"
    (folder / "nested").mkdir(parents=True)
    (folder / "folder.png").mkdir()  # a folder named like an image is searched, not read
    paths = [folder / "a.png", folder / "b.png", folder / "nested" / "c.png"]
    for image, path in zip(images, paths, strict=False):
        write_png(image, path)
    (folder / "notes.txt").write_text("not an image")
    output = tmp_path / "predictions.csv"
    main(["--ckpt_path", str(trained.best), "--input", str(folder), "--output", str(output)])
    rows = read_rows(output)
    assert [row["source"] for row in rows] == [str(path) for path in paths]
    expected = probabilities(trained.best, images[: len(paths)])
    assert [int(row["class_index"]) for row in rows] == expected.argmax(1).tolist()
    confidences = torch.tensor([float(row["confidence"]) for row in rows])
    assert torch.allclose(confidences, expected.max(1).values, atol=1e-5)


def test_predict_converts_images_to_the_checkpoint_shape(trained: Run, tmp_path: Path) -> None:
    datamodule = trained.cli.datamodule
    channels, (height, width) = datamodule.channels, datamodule.image_size
    other = 3 if channels == 1 else 1
    picture = torch.full((other, 2 * height + 1, width), 90, dtype=torch.uint8)
    write_png(picture, tmp_path / "x.png")
    output = tmp_path / "one.csv"
    main(
        [
            "--ckpt_path",
            str(trained.best),
            "--input",
            str(tmp_path / "x.png"),
            "--output",
            str(output),
        ]
    )
    [row] = read_rows(output)
    model, _ = load_classifier(trained.best)
    with torch.no_grad():  # the model's answer on the image converted to its input shape
        expected = int(
            model(read_image(tmp_path / "x.png", channels, (height, width))[None]).argmax()
        )
    assert (row["class_index"], row["class_name"]) == (
        str(expected),
        datamodule.class_names[expected],
    )


def test_bad_checkpoints_are_refused(trained: Run, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        load_classifier(tmp_path / "missing.ckpt")
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"this is not a checkpoint")
    with pytest.raises(CheckpointError, match="is not a PyTorch checkpoint"):
        load_classifier(garbage)
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "hyper_parameters": {"depth": 3}}, foreign)
    with pytest.raises(CheckpointError, match="holds a different model"):
        load_classifier(foreign)
    checkpoint = torch.load(trained.best, map_location="cpu", weights_only=True)
    checkpoint["hyper_parameters"]["net"] = {"class_path": "torch.nn.Identity", "init_args": {}}
    torch.save(checkpoint, tmp_path / "crafted.ckpt")
    with pytest.raises(CheckpointError, match=r"the network 'torch\.nn\.Identity' is not one of"):
        load_classifier(tmp_path / "crafted.ckpt")
