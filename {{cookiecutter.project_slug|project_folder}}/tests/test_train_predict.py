"""A short real fit on the data module's sample, then predictions and exports of its checkpoint."""

import csv
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from conftest import Fit
from torchvision.io import decode_png, read_file, write_png

from {{ cookiecutter.package_name }}.checkpoints import load_classifier
from {{ cookiecutter.package_name }}.errors import CheckpointError
from {{ cookiecutter.package_name }}.export import export
from {{ cookiecutter.package_name }}.model import ImageClassifier
from {{ cookiecutter.package_name }}.predict import main, predict
from {{ cookiecutter.package_name }}.train import TrainCLI


@dataclass
class Run:
    cli: TrainCLI
    workdir: Path

    @property
    def best(self) -> Path:
        return self.workdir / self.cli.config_init["checkpoint"].best_model_path

    @property
    def log_dir(self) -> Path:
        return self.workdir / self.cli.trainer.log_dir


@pytest.fixture(scope="module")
def trained(fit: Fit, tmp_path_factory: pytest.TempPathFactory) -> Run:
    workdir = tmp_path_factory.mktemp("run")
    return Run(fit(workdir, "--trainer.log_every_n_steps=1"), workdir)


@pytest.fixture(scope="module")
def test_batch(trained: Run) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole test split as one batch of uint8 images and labels."""
    datamodule = trained.cli.datamodule
    datamodule.setup("test")
    pairs = list(datamodule.test_dataloader())
    return torch.cat([images for images, _ in pairs]), torch.cat([labels for _, labels in pairs])


def probabilities(checkpoint: Path, images: torch.Tensor) -> torch.Tensor:
    model = load_classifier(checkpoint).eval()
    with torch.no_grad():
        return model(images).softmax(dim=1)


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as file:
        return list(csv.DictReader(file))


def test_fit_writes_checkpoints_config_and_test_metrics(trained: Run) -> None:
    assert trained.best.is_file() and (trained.best.parent / "last.ckpt").is_file()
    assert (trained.log_dir / "config.yaml").is_file()
    summary = json.loads((trained.log_dir / "test_metrics.json").read_text())
    assert trained.workdir / summary["best_checkpoint"] == trained.best
    assert summary["test/acc"] > 0.9, "the sample is easy to learn: the fit did not learn"
    assert summary["test/f1"] == pytest.approx(summary["test/acc"], abs=0.1)
    versions = json.loads((trained.log_dir / "versions.json").read_text())
    assert torch.__version__.startswith(versions["torch"]) and versions["lightning-template"]


def accuracy(model: ImageClassifier, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> float:
    correct = total = 0
    with torch.no_grad():
        for images, labels in batches:
            correct += int((model(images).argmax(dim=1) == labels).sum())
            total += len(labels)
    return correct / total


def test_logged_accuracy_is_the_models_on_each_whole_split(fit: Fit, tmp_path: Path) -> None:
    # One epoch after a sanity check: batches of the sanity check, of another epoch or of
    # another split counted in would change the figures.
    cli = fit(tmp_path, "--trainer.max_epochs=1", "--trainer.num_sanity_val_steps=2")
    checkpoint = cli.config_init["checkpoint"]
    model = load_classifier(tmp_path / checkpoint.best_model_path).eval()
    datamodule = cli.datamodule
    datamodule.setup("test")
    val_acc = accuracy(model, datamodule.val_dataloader())
    assert float(checkpoint.best_model_score) == pytest.approx(val_acc, abs=1e-6)
    summary = json.loads((tmp_path / cli.trainer.log_dir / "test_metrics.json").read_text())
    assert summary["test/acc"] == pytest.approx(
        accuracy(model, datamodule.test_dataloader()), abs=1e-6
    )


def test_checkpoint_keeps_the_data_facts(trained: Run) -> None:
    hparams = torch.load(trained.best, map_location="cpu", weights_only=True)["hyper_parameters"]
    datamodule = trained.cli.datamodule
    assert list(hparams["class_names"]) == list(datamodule.class_names)
    assert hparams["channels"] == datamodule.channels
    assert list(hparams["image_size"]) == list(datamodule.image_size)
    assert list(hparams["mean"]) == pytest.approx(list(datamodule.mean))


def test_test_report_pictures_decode(trained: Run) -> None:
    for name in ("confusion_matrix.png", "misclassified.png"):
        image = decode_png(read_file(str(trained.log_dir / name)))
        assert image.shape[-2:] == (600, 600), name


def test_exports_match_the_model(trained: Run, test_batch: tuple, tmp_path: Path) -> None:
    onnxruntime = pytest.importorskip("onnxruntime", reason="pip install -e .[export]")
    batch = test_batch[0][:16].float()
    model = load_classifier(trained.best).eval()
    with torch.no_grad():
        expected = model(batch)
    onnx_file = export(trained.best, "onnx", tmp_path / "m.onnx")
    session = onnxruntime.InferenceSession(str(onnx_file))
    [logits] = session.run(None, {"images": batch.numpy()})
    assert torch.allclose(torch.from_numpy(logits), expected, atol=1e-4)
    scripted = torch.jit.load(str(export(trained.best, "torchscript", tmp_path / "m.pt")))
    assert torch.allclose(scripted(batch), expected, atol=1e-4)


def test_checkpoints_load_weights_only(trained: Run) -> None:
    for path in (trained.best, trained.best.parent / "last.ckpt"):
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        assert checkpoint["hyper_parameters"] == dict(trained.cli.model.hparams)


def test_checkpoint_reload_gives_identical_outputs(trained: Run, test_batch: tuple) -> None:
    images, _ = test_batch
    reloaded = ImageClassifier.load_from_checkpoint(trained.best, map_location="cpu").eval()
    tested = trained.cli.model.cpu().eval()
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
    paths = [folder / "a.png", folder / "b.png", folder / "nested" / "c.png"]
    for image, path in zip(images, paths, strict=False):
        write_png(image, str(path))
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
    write_png(
        torch.full((other, 2 * height + 1, width), 90, dtype=torch.uint8), str(tmp_path / "x.png")
    )
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
    assert row["class_name"] in datamodule.class_names


def test_predict_refuses_bad_checkpoints(tmp_path: Path) -> None:
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


def test_predict_refuses_a_network_from_outside_nets(trained: Run, tmp_path: Path) -> None:
    checkpoint = torch.load(trained.best, map_location="cpu", weights_only=True)
    checkpoint["hyper_parameters"]["net"] = {"class_path": "torch.nn.Identity", "init_args": {}}
    crafted = tmp_path / "crafted.ckpt"
    torch.save(checkpoint, crafted)
    with pytest.raises(CheckpointError, match=r"names the network 'torch\.nn\.Identity'"):
        load_classifier(crafted)


def test_predict_errors_are_one_line_and_leave_no_files(trained: Run, tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--ckpt_path", str(tmp_path / "none.ckpt"), "--input", str(tmp_path)])
    assert exit_info.value.code == f"error: checkpoint {tmp_path / 'none.ckpt'} does not exist"
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    output = tmp_path / "out" / "p.csv"
    with pytest.raises(SystemExit) as exit_info:
        main(["--ckpt_path", str(trained.best), "--input", str(tmp_path), "--output", str(output)])
    assert str(exit_info.value.code).startswith(
        f"error: cannot read image {tmp_path / 'broken.png'}"
    )
    assert not list(output.parent.glob("*")), "a failed prediction left files behind"
