"""Time the baked project's predict command on the 10,000 test images of real MNIST.

    python benchmarks/predict.py [--data-dir DIR] [--ckpt_path CKPT] [--repeats 2]

DIR holds MNIST/raw (default: $MNIST_DATA_DIR). Bakes the default project and, without
--ckpt_path, trains a checkpoint for one epoch on DIR. Then it runs the predict command, whole
process, on the test split as PNG files (`--input <folder>`: decoding included) and as the data
module's own test split (no --input), fastest of --repeats runs each. Prints images per second
of the whole process and of the command after its imports (loading the checkpoint, reading the
images, the model, the CSV), and the accuracy of the CSV against the labels.
"""

import argparse
import csv
import os
import subprocess
import sys
from pathlib import Path

import torch
from common import bake, command, measured


def call_seconds(arguments: list[str], cwd: Path, env: dict[str, str]) -> float:
    """Seconds of the predict command in a fresh process, after its imports: loading
    the checkpoint, reading the images, the model and the CSV."""
    script = (
        "import sys, time; from mnist_lab.inference.predict import main\n"
        "start = time.perf_counter(); main(sys.argv[1:]); print(time.perf_counter() - start)\n"
    )
    completed = subprocess.run(
        [sys.executable, "-c", script, *arguments],
        cwd=cwd,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    return float(completed.stdout.split()[-1])


def write_pngs(data_dir: str, folder: Path, env: dict[str, str]) -> None:
    """The test split as <index>_<label>.png files, written by the project's own data module."""
    script = (
        "import sys; from pathlib import Path; from PIL import Image\n"
        "from mnist_lab.data import ImageDataModule\n"
        "datamodule = ImageDataModule(data_dir=sys.argv[1]); datamodule.setup('test')\n"
        "dataset = datamodule.datasets['test']\n"
        "for index in range(len(dataset)):\n"
        "    image, label = dataset[index]\n"
        "    path = Path(sys.argv[2], f'{index:05d}_{int(label)}.png')\n"
        "    Image.fromarray(image[0].numpy()).save(path)\n"
    )
    folder.mkdir()
    subprocess.run([sys.executable, "-c", script, data_dir, str(folder)], env=env, check=True)


def accuracy(predictions: Path, labels: dict[int, str]) -> tuple[int, float]:
    """Rows of the CSV and the share whose class name is the label of its test image."""
    with predictions.open(newline="") as file:
        rows = list(csv.DictReader(file))
    # Sources are the PNG files <index>_<label>.png, or test/<index> for the test split.
    indices = [int(Path(row["source"]).name.split("_")[0].removesuffix(".png")) for row in rows]
    right = sum(row["class_name"] == labels[i] for row, i in zip(rows, indices, strict=True))
    return len(rows), right / len(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", default=os.environ.get("MNIST_DATA_DIR"))
    parser.add_argument("--ckpt_path", type=Path, help="checkpoint of the default bake's model")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    if not args.data_dir:
        sys.exit("error: pass --data-dir or set MNIST_DATA_DIR to a folder holding MNIST/raw")
    data_dir = str(Path(args.data_dir).resolve())

    workdir, project, env = bake("predict")
    ckpt_path = args.ckpt_path.resolve() if args.ckpt_path else None
    if ckpt_path is None:
        train = command("train", f"--data.data_dir={data_dir}", "--trainer.max_epochs=1")
        subprocess.run(train, cwd=project, env=env, check=True, stdout=subprocess.DEVNULL)
        ckpt_path = max(project.glob("logs/**/epoch*.ckpt"), key=os.path.getmtime)
    images = workdir / "test-images"
    write_pngs(data_dir, images, env)
    labels = {int(path.stem.split("_")[0]): path.stem.split("_")[1] for path in images.iterdir()}

    predict = command("inference.predict")
    rows = []
    for name, extra in [
        ("PNG files (--input)", ["--input", str(images)]),
        ("test split (no --input)", []),
    ]:
        output = workdir / "predictions.csv"
        arguments = ["--ckpt_path", str(ckpt_path), *extra, "--output", str(output)]
        wall = min(measured([*predict, *arguments], project, env)[0] for _ in range(args.repeats))
        call = min(call_seconds(arguments, project, env) for _ in range(args.repeats))
        count, right = accuracy(output, labels)
        rows.append((name, count, wall, call, right))

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    print(f"\ndevice: {device} ({os.cpu_count()} CPU cores); fastest of {args.repeats} runs each\n")
    print("input                   | images | whole process    | after the imports | accuracy")
    for name, count, wall, call, right in rows:
        print(
            f"{name:23} | {count:6} | {wall:4.1f} s, {count / wall:5.0f} /s | "
            f"{call:4.1f} s, {count / call:5.0f} /s | {right:.2%}"
        )
    print(f"\n(checkpoint: {ckpt_path})")


if __name__ == "__main__":
    main()
