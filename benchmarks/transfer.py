"""Fine-tuning a backbone pretrained here on MNIST against random weights, on a small folder.

    python benchmarks/transfer.py --data-dir DIR [--name resnet18] [--seeds 3] [--epochs 10]
        [--per-class 40] [--pretrain-batches 300]

DIR holds MNIST/raw (default: $MNIST_DATA_DIR). Nothing is downloaded; every figure comes from
the baked projects' own train command (``python -m mnist_lab.train``):

1. Pretrain: a ``model=backbone dataset=mnist`` bake trains the timm model ``--name`` on real
   MNIST for one epoch of ``--pretrain-batches`` batches, from random weights (at 0.01, the rate
   of a network trained from scratch), and tests it. The random start is given as a weights
   file, so that the run normalizes its inputs with the model's pretrained mean and std as the
   fine-tuning will (a hub file's weights were trained with the statistics they are loaded
   with); nothing is frozen and the backbone trains at the classifier's rate. The best
   checkpoint's network, its ``net.model.`` prefix stripped, is saved as a timm state dict
   (``.safetensors``), the form of a hub file; the benchmark checks that ``weights_file``
   loads exactly its tensors.
2. A small folder that is not MNIST: the 26 capital letters rendered in the DejaVu fonts
   matplotlib ships (12 faces, dark ink on light paper, turned, shifted, scaled, with noise),
   28x28 grayscale PNGs; ``--per-class`` training images a letter (10 % of them held out for
   validation, as a user's run does) and a separate ``test/`` of 60 a letter.
3. Fine-tune: a ``model=backbone dataset=image_folder`` bake trains on that folder for
   ``--epochs`` epochs (early stopping off), each seed four ways, all else equal: random
   weights (``pretrained false``) against ``weights_file`` the MNIST file with the packaged
   config (max_lr 0.001; the file's backbone frozen for the first epoch, then at 0.1 of the
   rate); and both again at 0.01, the rate of a network trained from scratch, with nothing
   frozen and one rate for the whole network (is the file a better start at all, whatever the
   schedule). Horizontal flips are off for all: a mirrored letter is another glyph. The table
   has the test accuracy of each (of the best checkpoint by validation accuracy, as the
   command tests), their mean and spread, the versions and the load average.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from subprocess import PIPE

import matplotlib
import numpy as np
import torch
import yaml
from common import bake, command, machine, print_table, versions
from PIL import Image, ImageDraw, ImageFont
from safetensors.torch import load_file, save_file

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
TEST_PER_CLASS = 60
# Each way of starting, and its flags beside the shared ones: the packaged config as a user
# runs it, random against the MNIST file; then both trained at the rate of a network trained
# from scratch, nothing frozen, the backbone at the classifier's rate.
PACKAGED, SCRATCH_RATE = "packaged (max_lr 0.001)", "max_lr 0.01, one rate"
ARMS = {
    f"random, {PACKAGED}": ["--model.net.init_args.pretrained=false"],
    f"MNIST file, {PACKAGED}": ["--model.net.init_args.weights_file={weights}"],
    f"random, {SCRATCH_RATE}": [
        "--model.net.init_args.pretrained=false",
        "--model.scheduler.init_args.max_lr=0.01",
    ],
    f"MNIST file, {SCRATCH_RATE}": [
        "--config={no_freeze}",
        "--model.net.init_args.weights_file={weights}",
        "--model.net.init_args.backbone_lr_ratio=1.0",
        "--model.scheduler.init_args.max_lr=0.01",
    ],
}


def letters(root: Path, per_class: int, seed: int) -> None:
    """Writes root/train/<letter>/ and root/test/<letter>/ of 28x28 grayscale PNGs."""
    rng = np.random.default_rng(seed)
    ttf = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    fonts = [path for path in sorted(ttf.glob("DejaVu*.ttf")) if "Display" not in path.name]
    faces = [ImageFont.truetype(str(path), 40) for path in fonts]
    for split, count in (("train", per_class), ("test", TEST_PER_CLASS)):
        for letter in LETTERS:
            (root / split / letter).mkdir(parents=True)
            for index in range(count):
                canvas = Image.new("L", (64, 64), 0)
                offset = rng.integers(-5, 6, 2)
                face = faces[rng.integers(len(faces))]
                ImageDraw.Draw(canvas).text(
                    (32 + offset[0], 32 + offset[1]), letter, fill=255, font=face, anchor="mm"
                )
                canvas = canvas.rotate(rng.uniform(-12, 12), resample=Image.BILINEAR)
                crop = int(rng.integers(0, 9))  # a larger or smaller letter in the frame
                canvas = canvas.crop((crop, crop, 64 - crop, 64 - crop))
                ink = np.asarray(canvas.resize((28, 28), Image.LANCZOS), dtype=float) / 255
                paper, dark = rng.uniform(180, 250), rng.uniform(0, 90)
                pixels = paper - ink * (paper - dark) + rng.normal(0, 10, ink.shape)
                image = Image.fromarray(pixels.clip(0, 255).astype(np.uint8))
                image.save(root / split / letter / f"{index:03d}.png")


def train(project: Path, env: dict[str, str], run_dir: Path, *flags: str) -> float:
    """Runs the bake's train command into run_dir; returns its test accuracy."""
    args = command(
        "train",
        f"--trainer.default_root_dir={run_dir}",
        "--trainer.enable_progress_bar=false",
        "--trainer.logger=false",
        *flags,
    )
    done = subprocess.run(args, cwd=project, env=env, stdout=subprocess.DEVNULL, stderr=PIPE)
    if done.returncode != 0:
        sys.exit(f"{done.stderr.decode()}\nerror: {' '.join(args)} failed")
    [summary] = run_dir.rglob("test_metrics.json")
    return json.loads(summary.read_text())["test/acc"]


def write_atomic(tensors: dict[str, torch.Tensor], path: Path) -> None:
    partial = path.with_name(path.name + ".partial")
    save_file({key: value.contiguous() for key, value in tensors.items()}, str(partial))
    os.replace(partial, path)


def no_freeze_config(project: Path, path: Path) -> Path:
    """A config of the bake's packaged callbacks with FreezeBackbone's freeze_epochs 0."""
    packaged = yaml.safe_load((project / "src/mnist_lab/configs/default.yaml").read_text())
    callbacks = packaged["trainer"]["callbacks"]
    for callback in callbacks:
        if callback["class_path"].endswith("FreezeBackbone"):
            callback["init_args"]["freeze_epochs"] = 0
    path.write_text(yaml.safe_dump({"trainer": {"callbacks": callbacks}}))
    return path


def pretrain(workdir: Path, data_dir: str, name: str, batches: int) -> tuple[Path, float]:
    """Trains ``name`` on MNIST from random weights; returns its weights file and test accuracy."""
    import timm

    _, project, env = bake("transfer-mnist", model="backbone", dataset="mnist")
    torch.manual_seed(0)
    start = workdir / f"{name}-random.safetensors"
    write_atomic(timm.create_model(name, in_chans=1, num_classes=10).state_dict(), start)
    config = no_freeze_config(project, workdir / "pretrain.yaml")
    run_dir = workdir / "mnist-run"
    accuracy = train(
        project,
        env,
        run_dir,
        f"--config={config}",
        f"--data.data_dir={data_dir}",
        f"--model.net.init_args.name={name}",
        f"--model.net.init_args.weights_file={start}",
        "--model.net.init_args.backbone_lr_ratio=1.0",
        "--model.scheduler.init_args.max_lr=0.01",
        "--trainer.max_epochs=1",
        f"--trainer.limit_train_batches={batches}",
    )
    [best] = (run_dir / "checkpoints").glob("epoch*.ckpt")
    state = torch.load(best, map_location="cpu", weights_only=True)["state_dict"]
    prefix = "net.model."
    weights = workdir / f"{name}-mnist.safetensors"
    write_atomic({k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}, weights)
    return weights, accuracy


def check_loads_exactly(weights: Path, name: str, num_classes: int) -> None:
    """weights_file gives the backbone exactly the file's tensors (a new classifier)."""
    import timm

    model = timm.create_model(
        name,
        pretrained=True,
        pretrained_cfg_overlay={"file": str(weights)},
        in_chans=1,
        num_classes=num_classes,
    )
    loaded, saved = model.state_dict(), load_file(str(weights))
    head = {f"{model.pretrained_cfg['classifier']}.{part}" for part in ("weight", "bias")}
    changed = [key for key in saved if key not in head and not torch.equal(saved[key], loaded[key])]
    if set(loaded) != set(saved) or changed:
        sys.exit(f"error: weights_file does not load {weights} exactly: {changed[:3]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", default=os.environ.get("MNIST_DATA_DIR"))
    parser.add_argument("--name", default="resnet18", help="the timm model")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--per-class", type=int, default=40)
    parser.add_argument("--pretrain-batches", type=int, default=300, help="of 128 MNIST images")
    args = parser.parse_args()
    if not args.data_dir:
        sys.exit("error: pass --data-dir or set MNIST_DATA_DIR to a folder holding MNIST/raw")
    data_dir = str(Path(args.data_dir).resolve())
    started = time.perf_counter()
    print(machine(), "at the start", flush=True)

    workdir, project, env = bake("transfer", model="backbone", dataset="image_folder")
    weights, mnist_accuracy = pretrain(workdir, data_dir, args.name, args.pretrain_batches)
    check_loads_exactly(weights, args.name, len(LETTERS))
    print(f"{args.name} on MNIST: test accuracy {mnist_accuracy:.2%}; saved {weights}", flush=True)
    folder = workdir / "letters"
    letters(folder, args.per_class, seed=0)
    no_freeze = no_freeze_config(project, workdir / "no-freeze.yaml")
    shared = [
        f"--data.data_dir={folder}",
        f"--model.net.init_args.name={args.name}",
        f"--trainer.max_epochs={args.epochs}",
        f"--early_stopping.patience={args.epochs}",
        "--data.augment.flip=false",
    ]
    accuracies: dict[str, list[float]] = {arm: [] for arm in ARMS}
    rows = []
    for seed in range(args.seeds):
        for arm, flags in ARMS.items():
            run_dir = workdir / "runs" / f"{seed}-{list(ARMS).index(arm)}"
            flags = [f.format(weights=weights, no_freeze=no_freeze) for f in flags]
            flags = [*shared, *flags, f"--seed_everything={seed}"]
            accuracies[arm].append(train(project, env, run_dir, *flags))
        rows.append([str(seed), *(f"{accuracies[arm][-1]:.2%}" for arm in ARMS)])
        print(f"seed {seed}: {', '.join(rows[-1][1:])}", flush=True)
    rows.append(["mean", *(f"{statistics.mean(accuracies[arm]):.2%}" for arm in ARMS)])
    rows.append(["spread (min-max)", *(f"{min(a):.2%}-{max(a):.2%}" for a in accuracies.values())])
    if args.seeds > 1:
        rows.append(["std", *(f"{statistics.stdev(a):.2%}" for a in accuracies.values())])

    print(
        f"\n{args.name}: test accuracy on {len(LETTERS)} letters, {args.per_class} training "
        f"images a letter ({TEST_PER_CLASS} a letter tested), {args.epochs} epochs; pretrained "
        f"on {args.pretrain_batches} batches of MNIST ({mnist_accuracy:.2%} on its test set)\n"
    )
    print_table(["seed", *ARMS], rows)
    print(versions("torch", "torchvision", "pytorch-lightning", "timm"))
    minutes = (time.perf_counter() - started) / 60
    print(f"{machine()} at the end; {minutes:.1f} minutes in all; files: {workdir}")


if __name__ == "__main__":
    main()
