"""Bake the image_folder option and train it on two generated folders; print tables.

    python benchmarks/image_folder.py [--per-class 2000] [--train-batches 50] [--repeats 2]
                                      [--no-full-runs]

Writes two folders of 10 classes, each class a bar of its own colour (or brightness) and row
over noise: ``per-class`` 64x64 colour JPEGs each, and 150 8x8 grayscale PNGs each. For each
folder, on whatever device torch sees:

- first read: the data module's construction on a cold folder, in a fresh process (the headers
  read for ``auto``, every file decoded, checked, hashed and cached), its images per second
  and peak memory, and what ``image_size: auto`` and ``channels: auto`` picked;
- cached start: the same construction again;
- training images per second with the default augmentation and without it
  (``--data.augment null``), over ``--train-batches`` batches, the two alternating
  ``--repeats`` times (median and range);
- a default run: the train command with its packaged config as it is, wall time and test
  accuracy (``--no-full-runs`` leaves these out).

Then, for the JPEG folder at 32, 64 and 128 pixels, where one training step's time goes:
gathering the batch from the cache, the augmentation, the copy to the device, and the
forward pass, backward pass and optimizer step (the model and optimizer the config builds).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
from common import bake, command, machine, print_table, spread
from PIL import Image

# Constructs the baked data module in a fresh process; prints seconds, peak RSS and the sizes.
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
sizes = {"image_size": datamodule.image_size, "channels": datamodule.channels}
print(json.dumps({"seconds": seconds, "peak_mb": rss / 1024, "images": images, **sizes}))
"""


class Throughput(pl.Callback):
    """Training images per second, from each epoch's start to its last training batch."""

    def __init__(self, output: str) -> None:
        self.output = Path(output)
        self.images, self.seconds = 0, 0.0

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.epoch_start = time.perf_counter()

    def on_train_batch_end(
        self, trainer: pl.Trainer, module: Any, outputs: Any, batch: Any, *args: Any
    ) -> None:
        self.images += len(batch[1])
        self.epoch_end = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.seconds += self.epoch_end - self.epoch_start

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.output.write_text(json.dumps({"images_per_second": self.images / self.seconds}))


def write_folder(root: Path, classes: int, per_class: int, size: int, gray: bool) -> None:
    rng = np.random.default_rng(0)
    for label in range(classes):
        folder = root / "train" / f"class_{label:02d}"
        folder.mkdir(parents=True)
        colour = np.array([(label * 83) % 256, (label * 157) % 256, 255 - label * 20])
        row = int(size * label / (classes + 1))
        for index in range(per_class):
            pixels = rng.integers(0, 120, (size, size, 3), dtype=np.uint8)
            pixels[row : row + max(size // 12, 1), size // 6 : size - size // 6] = colour
            picture = Image.fromarray(pixels)
            if gray:
                picture.convert("L").save(folder / f"{index:05d}.png")
            else:
                picture.save(folder / f"{index:05d}.jpg", quality=90)


def construct(project: Path, data_dir: Path, env: dict[str, str]) -> dict:
    args = [sys.executable, "-c", CONSTRUCT, str(data_dir)]
    completed = subprocess.run(args, cwd=project, env=env, check=True, capture_output=True)
    return json.loads(completed.stdout.decode().splitlines()[-1])


def images_per_second(
    project: Path, env: dict[str, str], data_dir: Path, batches: int, *flags: str
) -> float:
    output = project / "throughput.json"
    callback = {"class_path": "image_folder.Throughput", "init_args": {"output": str(output)}}
    train = command(
        "train",
        f"--data.data_dir={data_dir}",
        "--trainer.max_epochs=1",
        "--trainer.enable_progress_bar=false",
        f"--trainer.limit_train_batches={batches}",
        "--trainer.limit_val_batches=5",
        "--trainer.limit_test_batches=5",
        f"--trainer.callbacks+={json.dumps([callback])}",
        *flags,
    )
    subprocess.run(train, cwd=project, env=env, check=True, stdout=subprocess.DEVNULL)
    return json.loads(output.read_text())["images_per_second"]


def default_run(
    project: Path, env: dict[str, str], data_dir: Path, run_dir: Path
) -> tuple[float, float]:
    start = time.perf_counter()
    train = command("train", f"--data.data_dir={data_dir}", f"--trainer.default_root_dir={run_dir}")
    subprocess.run(train, cwd=project, env=env, check=True, stdout=subprocess.DEVNULL)
    [summary] = run_dir.rglob("test_metrics.json")
    return time.perf_counter() - start, json.loads(summary.read_text())["test/acc"]


# Times the parts of one training step in this process (run with the bake's src importable).
BREAKDOWN = """
import json, sys, time, torch
from mnist_lab.support.process import configure_process
from mnist_lab.train import TrainCLI
configure_process()  # as the commands do: glibc keeps freed memory, and so on
size, device = int(sys.argv[2]), torch.device("cuda" if torch.cuda.is_available() else "cpu")
cli = TrainCLI([f"--data.data_dir={sys.argv[1]}", f"--data.image_size=[{size}, {size}]",
                "--data.channels=3", "--trainer.logger=false"])
model, datamodule = cli.model.to(device), cli.datamodule
datamodule.setup("fit")
train = datamodule.datasets["train"]
optimizer, scheduler = model.optimization(1000)
parts = dict.fromkeys(["read", "augment", "copy", "step"], 0.0)
def sync():
    if device.type == "cuda": torch.cuda.synchronize()
steps = 30
for step in range(steps + 3):
    indices = torch.randint(0, len(train), (datamodule.hparams.batch_size,)).tolist()
    start = time.perf_counter(); images, labels = train.__getitems__(indices)
    read = time.perf_counter(); images, labels = images.to(device), labels.to(device); sync()
    copied = time.perf_counter(); images = datamodule.augment(images); sync()
    augmented = time.perf_counter()
    loss = torch.nn.functional.cross_entropy(model(images), labels)
    optimizer.zero_grad(); loss.backward(); optimizer.step(); scheduler.step(); sync()
    stepped = time.perf_counter()
    if step >= 3:
        spans = (read - start, augmented - copied, copied - read, stepped - augmented)
        for part, seconds in zip(parts, spans):
            parts[part] += seconds
print(json.dumps({part: seconds / steps * 1000 for part, seconds in parts.items()}))
"""


def breakdown(project: Path, env: dict[str, str], data_dir: Path) -> list[list[str]]:
    rows = []
    for size in (32, 64, 128):
        args = [sys.executable, "-c", BREAKDOWN, str(data_dir), str(size)]
        completed = subprocess.run(
            args, cwd=project, env=env, check=True, capture_output=True, text=True
        )
        parts = json.loads(completed.stdout.splitlines()[-1])
        rows.append(
            [
                f"{size}x{size}",
                *(f"{parts[part]:.2f}" for part in parts),
                f"{sum(parts.values()):.1f}",
            ]
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--per-class", type=int, default=2000)
    parser.add_argument("--train-batches", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--no-full-runs", action="store_true", help="leave out the default runs")
    args = parser.parse_args()

    workdir, project, env = bake("image-folder", dataset="image_folder")
    folders = {
        f"{10 * args.per_class} 64x64 colour JPEGs": (workdir / "jpegs", args.per_class, 64, False),
        "1500 8x8 grayscale PNGs": (workdir / "pngs", 150, 8, True),
    }
    print(f"{machine()} at the start", flush=True)
    for name, (folder, per_class, size, gray) in folders.items():
        write_folder(folder, 10, per_class, size, gray)
        first, cached = construct(project, folder, env), construct(project, folder, env)
        with_augment, without = [], []
        for _ in range(args.repeats):
            with_augment.append(images_per_second(project, env, folder, args.train_batches))
            without.append(
                images_per_second(project, env, folder, args.train_batches, "--data.augment=null")
            )
        rows = [
            ["auto picked", f"image_size {first['image_size']}, channels {first['channels']}"],
            [
                "first read",
                f"{first['seconds']:.1f} s ({first['images'] / first['seconds']:.0f} images/s), "
                f"peak {first['peak_mb']:.0f} MB",
            ],
            ["cached start", f"{cached['seconds']:.2f} s"],
            ["train images/s, augmentation on", spread(with_augment, "{:.0f}")],
            ["train images/s, augmentation off", spread(without, "{:.0f}")],
            [
                "on / off",
                f"{statistics.median(with_augment) / statistics.median(without):.2f}x",
            ],
        ]
        if not args.no_full_runs:
            wall, accuracy = default_run(project, env, folder, workdir / f"run-{folder.name}")
            rows.append(["default run: wall, test accuracy", f"{wall:.0f} s, {accuracy:.2%}"])
        print(f"\n{name} (median and range of {args.repeats} alternating runs)\n")
        print_table(["figure", "value"], rows)
    jpegs = folders[next(iter(folders))][0]
    print(f"one training step of {jpegs.name}, milliseconds per batch of 64 (mean of 30 steps)\n")
    print_table(
        ["size", "cache read", "augmentation", "copy to device", "fwd/bwd/step", "total"],
        breakdown(project, env, jpegs),
    )
    print(f"{machine()} at the end; baked project, images and logs: {workdir}")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
