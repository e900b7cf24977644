"""Bake the image_folder option, train it on a generated folder of JPEGs and print one table.

    python benchmarks/image_folder.py [--classes 10] [--per-class 2000] [--size 64] [--epochs 1]
                                      [--train-batches N]

Generates ``classes x per-class`` JPEG files of ``size x size`` pixels (each class a bar of its
own colour and height over noise) into a temporary ``train/`` folder, bakes the template with
``dataset=image_folder`` and measures, on whatever device torch sees:

- first read: the data module's construction on a cold folder (every file decoded, checked,
  hashed and cached), and the peak memory of that process;
- cached start-up: the same construction again, and the whole train command's wall time from
  its start to its first training step;
- training: images per second over the training batches (data loading, augmentation and
  steps; validation excluded) with the default config, test accuracy, peak memory.

The benchmark's own callback (``Throughput``, below) is passed to the train command by class
path, with this folder on its ``PYTHONPATH``.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl

HERE = Path(__file__).resolve().parent
TEMPLATE_DIR = HERE.parent

# Constructs the baked data module in a fresh process; prints seconds and peak RSS (MB).
CONSTRUCT = """
import json, resource, sys, time
from mnist_lab.data import ImageDataModule
start = time.perf_counter()
datamodule = ImageDataModule(data_dir=sys.argv[1])
seconds = time.perf_counter() - start
# The first read decodes in worker processes: the peak of any of them counts too.
WHO = (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
rss = max(resource.getrusage(who).ru_maxrss for who in WHO)
images = len(datamodule.cache["paths"])
print(json.dumps({"seconds": seconds, "peak_mb": rss / 1024, "images": images}))
"""


class Throughput(pl.Callback):
    """Record the wall-clock time of the first training step, training images per second
    (from each epoch's start to its last training batch) and the process's peak memory."""

    def __init__(self, output: str) -> None:
        self.output = Path(output)
        self.first_step: float | None = None
        self.images = 0
        self.seconds = 0.0

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.epoch_start = time.perf_counter()

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self.first_step is None:
            self.first_step = time.time()

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        self.images += len(batch[1])
        self.epoch_end = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.seconds += self.epoch_end - self.epoch_start

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        self.output.write_text(
            json.dumps(
                {
                    "first_step": self.first_step,
                    "images_per_second": self.images / self.seconds,
                    "peak_mb": peak,
                }
            )
        )


def write_folder(root: Path, classes: int, per_class: int, size: int) -> float:
    """Write the JPEG files; return the seconds it took."""
    import numpy as np
    from PIL import Image

    start = time.perf_counter()
    rng = np.random.default_rng(0)
    for label in range(classes):
        folder = root / "train" / f"class_{label:02d}"
        folder.mkdir(parents=True)
        colour = np.array([(label * 83) % 256, (label * 157) % 256, 255 - label * 20])
        row = int(size * label / (classes + 1))
        for index in range(per_class):
            pixels = rng.integers(0, 120, (size, size, 3), dtype=np.uint8)
            pixels[row : row + max(size // 12, 1), size // 6 : -size // 6] = colour
            Image.fromarray(pixels).save(folder / f"{index:05d}.jpg", quality=90)
    return time.perf_counter() - start


def construct(project: Path, data_dir: Path, env: dict[str, str]) -> dict:
    command = [sys.executable, "-c", CONSTRUCT, str(data_dir)]
    completed = subprocess.run(command, cwd=project, env=env, check=True, capture_output=True)
    return json.loads(completed.stdout.decode().splitlines()[-1])


def main() -> None:
    from cookiecutter.main import cookiecutter

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--per-class", type=int, default=2000)
    parser.add_argument("--size", type=int, default=64, help="height and width of the JPEGs")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument(
        "--train-batches",
        type=int,
        help="limit each epoch to this many batches (and 10 of val, test)",
    )
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="lightning-template-image-folder-"))
    data_dir = workdir / "images"
    write_seconds = write_folder(data_dir, args.classes, args.per_class, args.size)
    project = Path(
        cookiecutter(
            str(TEMPLATE_DIR),
            no_input=True,
            output_dir=str(workdir),
            extra_context={"dataset": "image_folder"},
        )
    )
    env = {**os.environ, "PYTHONPATH": f"{project / 'src'}{os.pathsep}{HERE}"}

    first = construct(project, data_dir, env)
    cached = construct(project, data_dir, env)

    throughput_file = workdir / "throughput.json"
    callback = {
        "class_path": "image_folder.Throughput",
        "init_args": {"output": str(throughput_file)},
    }
    train = [
        *[sys.executable, "-m", "mnist_lab.train", "--config", "configs/default.yaml"],
        f"--data.data_dir={data_dir}",
        f"--trainer.max_epochs={args.epochs}",
        "--trainer.enable_progress_bar=false",
        f"--trainer.callbacks={json.dumps([callback])}",
    ]
    if args.train_batches:
        train += [f"--trainer.limit_train_batches={args.train_batches}"]
        train += ["--trainer.limit_val_batches=10", "--trainer.limit_test_batches=10"]
    start = time.time()
    subprocess.run(train, cwd=project, env=env, check=True, stdout=subprocess.DEVNULL)
    whole_train = time.time() - start
    measured = json.loads(throughput_file.read_text())
    summary_file = max(project.glob("logs/**/test_metrics.json"), key=os.path.getmtime)
    test_acc = json.loads(summary_file.read_text())["test/acc"]
    cache_mb = sum(path.stat().st_size for path in (data_dir / ".cache").glob("*.pt")) / 1e6
    workers_peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024

    import torch

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    device += f" ({os.cpu_count()} CPU cores)"
    count = first["images"]
    limit = f" of {args.train_batches} batches" if args.train_batches else ""
    rows = [
        ("device", device),
        ("images", f"{count} ({args.classes} classes, {args.size}x{args.size} JPEG)"),
        ("writing the JPEGs", f"{write_seconds:.1f} s"),
        (
            "first read (decode, check, cache)",
            f"{first['seconds']:.1f} s ({count / first['seconds']:.0f} images/s)",
        ),
        ("  its peak memory", f"{first['peak_mb']:.0f} MB; cache file {cache_mb:.0f} MB"),
        ("cached data module start-up", f"{cached['seconds']:.2f} s"),
        (
            "train command: start to first step",
            f"{measured['first_step'] - start:.1f} s (cache warm)",
        ),
        (
            "training images/s",
            f"{measured['images_per_second']:.0f} (default config, augmentation on)",
        ),
        ("train command wall", f"{whole_train:.1f} s: {args.epochs} epoch(s){limit}, fit and test"),
        ("test accuracy", f"{test_acc:.2%}"),
        ("peak memory, train process", f"{measured['peak_mb']:.0f} MB"),
        ("peak memory, any process", f"{workers_peak_mb:.0f} MB"),
    ]
    width = max(len(name) for name, _ in rows)
    print(f"\n{'figure'.ljust(width)} | value\n{'-' * width}-|------")
    for name, value in rows:
        print(f"{name.ljust(width)} | {value}")
    print(f"\n(baked project, images and logs: {workdir})")


if __name__ == "__main__":
    main()
