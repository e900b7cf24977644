"""A short real fit on synthetic data, then predictions from its checkpoint."""

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torchvision.io import decode_png, read_file, write_png

from {{ cookiecutter.package_name }}.data import MEAN, STD, load_split
from {{ cookiecutter.package_name }}.export import export
from {{ cookiecutter.package_name }}.model import ImageClassifier
from {{ cookiecutter.package_name }}.predict import CheckpointError, load_classifier, main, predict
from {{ cookiecutter.package_name }}.train import TrainCLI, train


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
def trained(mnist_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Run:
    workdir = tmp_path_factory.mktemp("run")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(workdir)
        cli = train(
            [
                f"--data.data_dir={mnist_dir}",
                "--data.val_size=128",
                "--data.batch_size=64",
                "--trainer.max_epochs=2",
                "--trainer.accelerator=cpu",
                "--trainer.devices=1",
                "--trainer.enable_progress_bar=false",
                "--trainer.enable_model_summary=false",
                "--trainer.log_every_n_steps=1",
            ]
        )
    return Run(cli, workdir)


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as file:
        return list(csv.DictReader(file))


def test_fit_writes_checkpoints_config_and_test_metrics(trained: Run) -> None:
    assert trained.best.is_file() and (trained.best.parent / "last.ckpt").is_file()
    assert (trained.log_dir / "config.yaml").is_file()
    summary = json.loads((trained.log_dir / "test_metrics.json").read_text())
    assert trained.workdir / summary["best_checkpoint"] == trained.best
    assert summary["test/acc"] > 0.9, "the synthetic digits are easy: the fit did not learn"
    assert summary["test/f1"] == pytest.approx(summary["test/acc"], abs=0.1)
    versions = json.loads((trained.log_dir / "versions.json").read_text())
    assert torch.__version__.startswith(versions["torch"]) and versions["lightning-template"]


def test_test_report_pictures_decode(trained: Run) -> None:
    for name in ("confusion_matrix.png", "misclassified.png"):
        image = decode_png(read_file(str(trained.log_dir / name)))
        assert image.shape[-2:] == (600, 600), name


def test_exports_match_the_model(trained: Run, mnist_dir: Path, tmp_path: Path) -> None:
    onnxruntime = pytest.importorskip("onnxruntime", reason="pip install -e .[export]")
    images, _ = load_split(mnist_dir, train=False)
    batch = (images[:16].float() - MEAN) / STD
    model = load_classifier(trained.best).eval()
    with torch.no_grad():
        expected = model(batch)
    session = onnxruntime.InferenceSession(str(export(trained.best, "onnx", tmp_path / "m.onnx")))
    [logits] = session.run(None, {"images": batch.numpy()})
    assert torch.allclose(torch.from_numpy(logits), expected, atol=1e-4)
    scripted = torch.jit.load(str(export(trained.best, "torchscript", tmp_path / "m.pt")))
    assert torch.allclose(scripted(batch), expected, atol=1e-4)


def test_checkpoints_load_weights_only(trained: Run) -> None:
    for path in (trained.best, trained.best.parent / "last.ckpt"):
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        assert checkpoint["hyper_parameters"] == dict(trained.cli.model.hparams)


def test_checkpoint_reload_gives_identical_outputs(trained: Run, mnist_dir: Path) -> None:
    images, _ = load_split(mnist_dir, train=False)
    batch = (images.float() - MEAN) / STD
    reloaded = ImageClassifier.load_from_checkpoint(trained.best, map_location="cpu").eval()
    tested = trained.cli.model.cpu().eval()
    with torch.no_grad():
        assert torch.equal(reloaded(batch), tested(batch))


def test_predict_test_split_matches_the_model(
    trained: Run, mnist_dir: Path, tmp_path: Path
) -> None:
    output = predict(trained.best, mnist_dir, tmp_path / "out" / "test.csv", accelerator="cpu")
    rows = read_rows(output)
    assert [row["source"] for row in rows] == [f"test/{i}" for i in range(128)]
    datamodule = trained.cli.datamodule
    datamodule.setup("test")
    test_set = datamodule.datasets["test"]
    images, labels = test_set.images, test_set.targets
    model = load_classifier(trained.best).eval()
    with torch.no_grad():
        probabilities = model(datamodule.on_after_batch_transfer((images, labels), 0)[0]).softmax(1)
    assert [int(row["predicted"]) for row in rows] == probabilities.argmax(1).tolist()
    confidences = torch.tensor([float(row["confidence"]) for row in rows])
    assert torch.allclose(confidences, probabilities.max(1).values, atol=1e-5)
    assert not (tmp_path / "out" / "test.csv.partial").exists()


def test_predict_image_folder_writes_one_row_per_image(trained: Run, tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    for digit in (3, 7):
        picture = torch.zeros(1, 28, 28, dtype=torch.uint8)
        picture[0, 2 + 2 * digit : 4 + 2 * digit, 4:24] = 255
        write_png(picture, str(images / f"digit{digit}.png"))
    output = tmp_path / "predictions.csv"
    main(["--ckpt_path", str(trained.best), "--input", str(images), "--output", str(output)])
    rows = read_rows(output)
    assert [Path(row["source"]).name for row in rows] == ["digit3.png", "digit7.png"]
    assert [row["predicted"] for row in rows] == ["3", "7"]


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


def test_predict_cli_reports_errors_in_one_line(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--ckpt_path", str(tmp_path / "none.ckpt"), "--input", str(tmp_path)])
    assert exit_info.value.code == f"error: checkpoint {tmp_path / 'none.ckpt'} does not exist"
