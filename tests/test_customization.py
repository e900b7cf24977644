"""The generated README's promise: new data is data.py (plus the config), a new network is
nets.py (plus the config). Everything else of the bake works untouched."""

import shutil
import textwrap
from pathlib import Path

import pytest
from bakes import Bake, run_in, train_in, write_sample

# Another shape of data: 3 channels, 20x20 pixels, 4 named classes, made in memory. Each
# class brightens its own colour channels, so a short fit learns it.
STAND_IN_DATA = '''
"""Stand-in data: coloured noise in four named classes, generated in memory."""

from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

COLOURS = {"red": (1, 0, 0), "green": (0, 1, 0), "blue": (0, 0, 1), "white": (1, 1, 1)}


def coloured_images(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(count) % len(COLOURS)
    noise = torch.randint(0, 80, (count, 3, 20, 20), generator=generator)
    bright = torch.tensor(list(COLOURS.values()))[labels].view(count, 3, 1, 1) * 170
    return (noise + bright).to(torch.uint8), labels


class ImageDataModule(pl.LightningDataModule):
    class_names = tuple(COLOURS)
    channels = 3
    image_size = (20, 20)
    mean = (120.0, 120.0, 120.0)
    std = (90.0, 90.0, 90.0)

    def __init__(self, size: int = 512, batch_size: int = 32, seed: int = 0) -> None:
        super().__init__()
        self.save_hyperparameters()

    @staticmethod
    def write_sample(folder: Path) -> dict[str, Any]:
        return {"size": 384}

    def setup(self, stage: str) -> None:
        images, labels = coloured_images(self.hparams.size, self.hparams.seed)
        cut = self.hparams.size // 4
        self.val = TensorDataset(images[:cut], labels[:cut])
        self.train = TensorDataset(images[cut:], labels[cut:])
        self.test = TensorDataset(*coloured_images(cut, self.hparams.seed + 1))

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train, batch_size=self.hparams.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val, batch_size=self.hparams.batch_size)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.test, batch_size=self.hparams.batch_size)
'''

# Checks, inside the bake, that the exported ONNX model and the checkpoint agree.
# The data: section of configs/default.yaml for the stand-in module: its own arguments.
STAND_IN_CONFIG = "data:\n  size: 512\n  batch_size: 32\n  seed: 0\n"

ONNX_PARITY = """
import sys, onnxruntime, torch
from mnist_lab.inference.classifier import load_classifier
model, _ = load_classifier(sys.argv[1])
images = torch.randint(0, 256, (5, *model.input_shape)).float()
[logits] = onnxruntime.InferenceSession(sys.argv[2]).run(None, {"images": images.numpy()})
with torch.no_grad():
    assert torch.allclose(torch.from_numpy(logits), model(images), atol=1e-4)
print("onnx matches")
"""

PNG = """
import sys
from PIL import Image
colours = {"red": (1, 0, 0), "green": (0, 1, 0), "blue": (0, 0, 1), "white": (1, 1, 1)}
for name, colour in colours.items():
    pixels = tuple(210 * c + 20 for c in colour)
    Image.new("RGB", (30, 40), pixels).save(f"{sys.argv[1]}/{name}.png")
"""


def copy_of(project: Path, tmp_path: Path) -> Path:
    return shutil.copytree(project, tmp_path / project.name)


def assert_onnx_export_matches(project: Path, checkpoint: Path, onnx_file: Path) -> None:
    """Export the checkpoint to ONNX with the export command; its outputs match the model's."""
    export = ["-m", "mnist_lab.inference.export", f"--ckpt_path={checkpoint}", "--format=onnx"]
    run_in(project, *export, f"--output={onnx_file}")
    parity = run_in(project, "-c", ONNX_PARITY, str(checkpoint), str(onnx_file))
    assert "onnx matches" in parity.stdout


def checkpoint_of(run_dir: Path) -> Path:
    [best] = [path for path in run_dir.rglob("*.ckpt") if path.name != "last.ckpt"]
    return best


@pytest.mark.slow
def test_replacing_only_data_py_keeps_everything_working(bake: Bake, tmp_path: Path) -> None:
    project = copy_of(bake(), tmp_path)
    (project / "src/mnist_lab/data.py").write_text(textwrap.dedent(STAND_IN_DATA).lstrip())
    # The README's one other step: the config's data: section names the new module's arguments.
    config = project / "src/mnist_lab/configs/default.yaml"
    text = config.read_text()
    start, end = text.index("\ndata:\n") + 1, text.index("\n# The best model")
    config.write_text(text[:start] + STAND_IN_CONFIG + text[end:])

    # The quick suite, as a user runs it; only the IDX-loader tests skip, saying why, and the
    # exact mid-epoch resume, which needs a training loader that keeps its position.
    suite = run_in(project, "-m", "pytest", "-q", "-p", "no:cacheprovider", timeout=900)
    summary = suite.stdout.strip().splitlines()[-1]
    assert "failed" not in summary and "3 skipped" in summary, summary
    skipped = [line for line in suite.stdout.splitlines() if line.startswith("SKIPPED")]
    assert [line.split()[2].split(":")[0] for line in skipped] == [
        "tests/test_idx_files.py",
        "tests/test_resume.py",
    ], skipped

    run_dir = tmp_path / "runs"
    run_in(
        project,
        "-m",
        "mnist_lab.train",
        "--trainer.max_epochs=3",
        "--trainer.devices=1",
        f"--trainer.default_root_dir={run_dir}",
    )
    best = checkpoint_of(run_dir)
    for name in ("confusion_matrix.png", "misclassified.png"):
        assert list(run_dir.rglob(name)), f"no {name}"

    images = tmp_path / "images"
    images.mkdir()
    run_in(project, "-c", PNG, str(images))
    output = tmp_path / "colours.csv"
    run_in(
        project,
        "-m",
        "mnist_lab.inference.predict",
        f"--ckpt_path={best}",
        f"--input={images}",
        f"--output={output}",
    )
    rows = output.read_text().splitlines()
    assert rows[0] == "source,class_index,class_name,confidence"
    predicted = {Path(row.split(",")[0]).stem: row.split(",")[2] for row in rows[1:]}
    assert predicted == {name: name for name in ("red", "green", "blue", "white")}

    assert_onnx_export_matches(project, best, tmp_path / "model.onnx")


NEW_NETWORK = '''


class TinyNet(nn.Module):
    """Global average of each channel, then a linear classifier."""

    def __init__(
        self, in_channels: int, num_classes: int, image_size: tuple[int, int], scale: float = 1.0
    ) -> None:
        super().__init__()
        self.scale = scale
        self.classifier = nn.Linear(in_channels, num_classes)

    def forward(self, images: Tensor) -> Tensor:
        return self.classifier(images.mean(dim=(2, 3)) * self.scale)
'''


@pytest.mark.slow
def test_a_new_network_is_one_class_and_one_flag(bake: Bake, tmp_path: Path) -> None:
    project = copy_of(bake(), tmp_path)
    nets = project / "src/mnist_lab/nets.py"
    nets.write_text(nets.read_text() + NEW_NETWORK)
    data_args = write_sample(project, tmp_path / "data")
    run_dir = tmp_path / "runs"
    train_in(
        project,
        data_args,
        "--model.net=mnist_lab.nets.TinyNet",
        "--model.net.scale=2.0",
        "--trainer.max_epochs=1",
        run_dir=run_dir,
    )
    best = checkpoint_of(run_dir)
    check = (
        "import sys; from mnist_lab.inference.classifier import load_classifier; "
        "model, _ = load_classifier(sys.argv[1]); "
        "print(type(model.net).__name__, model.net.scale)"
    )
    assert run_in(project, "-c", check, str(best)).stdout.split() == ["TinyNet", "2.0"]
    output = tmp_path / "test.csv"
    run_in(
        project, "-m", "mnist_lab.inference.predict", f"--ckpt_path={best}", f"--output={output}"
    )
    assert len(output.read_text().splitlines()) == 1 + 127
    assert_onnx_export_matches(project, best, tmp_path / "tiny.onnx")
