"""What the image_folder bake's augmentation costs or gains on three folders of its own; a table.

    python benchmarks/augmentation.py [--project BAKED] [--seeds 2] [--folders glyphs objects
        photos] [--variants default none ...] [--photos DIR] [--results FILE]

Writes three folders, deterministically from ``--data-seed``, into a temporary folder, each
with a ``test/`` folder large enough to tell a point of accuracy apart (val/ is held out of
train/ as a user's run does):

- ``glyphs``: the digits 0-9 rendered in the DejaVu fonts that matplotlib ships (12 faces,
  turned by up to 10 degrees, shifted, with noise), grayscale PNGs of 10-16 pixels (most 12);
  150 training and 100 test images a class. A mirrored digit is no longer the same digit.
- ``objects``: five shapes (disc, ring, square, triangle, star) of random colour, size, place
  and turn over noisy colour gradients, 32x32 RGB PNGs; 200 training and 100 test a class.
- ``photos``: eight real photographs, one class each: seven of scikit-image's sample data
  (astronaut, cat, coffee, rocket, motorcycle, Hubble deep field, retina; ``pip install
  scikit-image``, or ``--photos`` a folder of them) and matplotlib's Grace Hopper. Each image is
  a random crop of 12-45 % of the photograph's shorter side, saved at 20-300 pixels a side (a
  third at 48x64), as RGB or CMYK JPEG, RGBA, grayscale or palette PNG; 120 training and 60
  test images a class.

Every run is the baked project's own ``python -m mnist_lab.train --data.data_dir <folder>``
with the flags of its variant and size (``--seed_everything`` per seed); the table has the
test accuracy (median and range over the seeds), the epochs each run took before early stopping
ended it, and the wall time of each run, start to exit, with the machine's load as it ended.
``--project`` runs an existing bake (e.g. one of an older template, to compare); without it,
this template is baked with ``dataset=image_folder``. ``--results`` keeps one JSON line per
run, and runs already there are not run again.
"""

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import matplotlib
import numpy as np
import torch
from common import bake, command, machine, print_table, spread
from PIL import Image, ImageDraw, ImageFilter, ImageFont

# The flags of each variant; "default" is the packaged config as it is.
VARIANTS = {
    "default": [],
    "none": ["--data.augment=null"],
    "no-crop": ["--data.augment.crop_scale=[1.0, 1.0]"],
    "no-flip": ["--data.augment.flip=false"],
    "no-jitter": ["--data.augment.jitter=0.0"],
    "0.3.0": [  # the default of template 0.3.0, for a bake of a later one
        "--data.augment.crop_scale=[0.6, 1.0]",
        "--data.augment.flip=true",
        "--data.augment.jitter=0.2",
    ],
}
# The sizes run for each folder: "auto" and two explicit ones around it.
SIZES = {
    "glyphs": ["auto", "16", "32"],
    "objects": ["auto", "16", "64"],
    "photos": ["auto", "32", "64"],
}
# Only these variants run at the explicit sizes; every variant runs at auto.
SIZED_VARIANTS = ("default", "none", "0.3.0")
PHOTOS = ["astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png"]
PHOTOS += ["hubble_deep_field.jpg", "retina.jpg"]


def glyphs(root: Path, rng: np.random.Generator) -> None:
    ttf = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    fonts = [path for path in sorted(ttf.glob("DejaVu*.ttf")) if "Display" not in path.name]
    faces = [ImageFont.truetype(str(path), 56) for path in fonts]
    for split, count in (("train", 150), ("test", 100)):
        for digit in "0123456789":
            (root / split / digit).mkdir(parents=True)
            for index in range(count):
                canvas = Image.new("L", (64, 64), 0)
                draw = ImageDraw.Draw(canvas)
                face = faces[rng.integers(len(faces))]
                offset = rng.integers(-4, 5, 2)
                draw.text((32 + offset[0], 32 + offset[1]), digit, fill=255, font=face, anchor="mm")
                canvas = canvas.rotate(rng.uniform(-10, 10), resample=Image.BILINEAR)
                side = int(rng.choice([10, 12, 12, 12, 14, 16]))
                small = np.asarray(canvas.resize((side, side), Image.LANCZOS), dtype=float)
                ink, paper = rng.uniform(170, 255), rng.uniform(0, 60)
                strokes = small / small.max() * (ink - paper)
                pixels = paper + strokes + rng.normal(0, 12, small.shape)
                image = Image.fromarray(pixels.clip(0, 255).astype(np.uint8))
                image.save(root / split / digit / f"{index:03d}.png")


def shape_points(kind: str, rng: np.random.Generator) -> list[tuple[float, float]]:
    """Corners of a shape around (0, 0) with radius 1, turned at random."""
    corners = {"square": 4, "triangle": 3, "star": 10}[kind]
    angles = rng.uniform(0, 2 * np.pi) + np.arange(corners) * 2 * np.pi / corners
    radii = np.where(np.arange(corners) % 2, 0.45, 1.0) if kind == "star" else np.ones(corners)
    return list(zip(radii * np.cos(angles), radii * np.sin(angles), strict=True))


def objects(root: Path, rng: np.random.Generator) -> None:
    kinds = ["disc", "ring", "square", "triangle", "star"]
    y, x = np.mgrid[0:32, 0:32] / 31
    for split, count in (("train", 200), ("test", 100)):
        for kind in kinds:
            (root / split / kind).mkdir(parents=True)
            for index in range(count):
                start, end = rng.uniform(0, 255, (2, 3))
                slope = rng.uniform(0, 1, 2)
                along = (slope[0] * x + slope[1] * y)[..., None] / slope.sum()
                background = start + along * (end - start) + rng.normal(0, 15, (32, 32, 3))
                image = Image.fromarray(background.clip(0, 255).astype(np.uint8))
                draw = ImageDraw.Draw(image)
                radius = rng.uniform(5, 11)
                cx, cy = rng.uniform(radius + 1, 31 - radius, 2)
                colour = tuple(int(c) for c in rng.integers(0, 256, 3))
                box = (cx - radius, cy - radius, cx + radius, cy + radius)
                if kind in ("disc", "ring"):
                    width = max(2, int(radius / 3)) if kind == "ring" else 0
                    draw.ellipse(box, fill=None if width else colour, outline=colour, width=width)
                else:
                    corners = shape_points(kind, rng)
                    points = [(cx + radius * px, cy + radius * py) for px, py in corners]
                    draw.polygon(points, fill=colour)
                image.save(root / split / kind / f"{index:03d}.png")


def photo_sources(folder: Path | None) -> dict[str, Path]:
    if folder is None:
        spec = importlib.util.find_spec("skimage")
        if spec is None or spec.origin is None:
            sys.exit("error: pip install scikit-image (its sample photographs), or pass --photos")
        folder = Path(spec.origin).parent / "data"
    sources = {name.split(".")[0].split("_")[0]: folder / name for name in PHOTOS}
    sources["hopper"] = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    missing = [str(path) for path in sources.values() if not path.is_file()]
    if missing:
        sys.exit(f"error: missing photographs: {', '.join(missing)}")
    return sources


def photos(root: Path, rng: np.random.Generator, folder: Path | None) -> None:
    modes = [("RGB", "jpg"), ("RGB", "jpg"), ("CMYK", "jpg"), ("RGBA", "png"), ("L", "png")]
    modes += [("P", "png")]
    for name, path in photo_sources(folder).items():
        photo = Image.open(path).convert("RGB")
        for split, count in (("train", 120), ("test", 60)):
            (root / split / name).mkdir(parents=True)
            for index in range(count):
                side = rng.uniform(0.12, 0.45) * min(photo.size)
                aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
                width, height = min(photo.width, side * aspect), min(photo.height, side / aspect)
                left = rng.uniform(0, photo.width - width)
                top = rng.uniform(0, photo.height - height)
                crop = photo.crop((int(left), int(top), int(left + width), int(top + height)))
                if rng.uniform() < 1 / 3:
                    size = (64, 48)
                else:
                    longest = rng.uniform(20, 300)
                    scale = longest / max(crop.size)
                    size = (max(20, round(crop.width * scale)), max(20, round(crop.height * scale)))
                crop = crop.resize(size, Image.BICUBIC)
                mode, suffix = modes[rng.integers(len(modes))]
                if mode == "RGBA":  # a soft edge of transparency, as cut-outs have
                    alpha = Image.new("L", size, 0)
                    ImageDraw.Draw(alpha).ellipse((0, 0, *size), fill=255)
                    crop = crop.copy()
                    crop.putalpha(alpha.filter(ImageFilter.GaussianBlur(2)))
                else:
                    crop = crop.convert(mode)
                crop.save(root / split / name / f"{index:03d}.{suffix}")


def build(folder: str, root: Path, seed: int, photo_folder: Path | None) -> Path:
    rng = np.random.default_rng([seed, ["glyphs", "objects", "photos"].index(folder)])
    target = root / folder
    if folder == "photos":
        photos(target, rng, photo_folder)
    else:
        globals()[folder](target, rng)
    return target


def size_flags(size: str) -> list[str]:
    return [] if size == "auto" else [f"--data.image_size=[{size}, {size}]"]


def run(
    project: Path, env: dict[str, str], data_dir: Path, flags: list[str], run_dir: Path
) -> dict:
    train = command(
        "train",
        f"--data.data_dir={data_dir}",
        f"--trainer.default_root_dir={run_dir}",
        "--trainer.enable_progress_bar=false",
        *flags,
    )
    start = time.perf_counter()
    done = subprocess.run(train, cwd=project, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"error: {' '.join(train)} failed:\n{done.stderr[-2000:]}")
    [summary] = run_dir.rglob("test_metrics.json")
    [last] = run_dir.rglob("checkpoints/last.ckpt")  # early stopping decides the epochs
    epochs = torch.load(last, map_location="cpu", weights_only=True)["epoch"] + 1
    return {
        "seconds": seconds,
        "acc": json.loads(summary.read_text())["test/acc"],
        "epochs": epochs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--project", type=Path, help="a baked image_folder project to run")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--data-seed", type=int, default=0)
    parser.add_argument("--folders", nargs="+", default=["glyphs", "objects", "photos"])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS)[:5])
    parser.add_argument("--sizes", nargs="+", help="only these sizes (auto or a side)")
    parser.add_argument("--photos", type=Path, help="folder of scikit-image's sample photos")
    parser.add_argument("--results", type=Path, help="JSON lines of the runs, kept and reused")
    parser.add_argument("--label", default="", help="a name for this bake in the results")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="lightning-template-augment-"))
    if args.project:
        project = args.project.resolve()
        env = {**os.environ, "PYTHONPATH": str(project / "src")}
    else:
        workdir, project, env = bake("augment", dataset="image_folder")
    label = args.label or str(project)
    done = []
    if args.results and args.results.is_file():
        done = [json.loads(line) for line in args.results.read_text().splitlines() if line]
    print(f"{machine()} at the start; folders and runs in {workdir}", flush=True)
    rows = []
    for folder in args.folders:
        data_dir = build(folder, workdir / "data", args.data_seed, args.photos)
        for size in args.sizes or SIZES[folder]:
            if size not in SIZES[folder] and size != "auto":
                continue
            for variant in args.variants:
                if size != "auto" and variant not in SIZED_VARIANTS:
                    continue
                found = []
                for seed in range(args.seeds):
                    key = {"label": label, "folder": folder, "size": size, "variant": variant}
                    key |= {"seed": seed, "data_seed": args.data_seed}
                    result = next((r for r in done if all(r[k] == v for k, v in key.items())), None)
                    if result is None:
                        flags = [*VARIANTS[variant], *size_flags(size), f"--seed_everything={seed}"]
                        run_dir = workdir / "runs" / f"{folder}-{size}-{variant}-{seed}"
                        result = key | run(project, env, data_dir, flags, run_dir)
                        result["load"] = Path("/proc/loadavg").read_text().split()[0]
                        if args.results:
                            with args.results.open("a") as file:
                                file.write(json.dumps(result) + "\n")
                    found.append(result)
                accuracy = [100 * r["acc"] for r in found]
                seconds = [r["seconds"] for r in found]
                epochs = "/".join(str(r.get("epochs", "?")) for r in found)
                loads = ", ".join(str(r.get("load", "?")) for r in found)
                rows.append(
                    [folder, size, variant, spread(accuracy), epochs, spread(seconds), loads]
                )
                print(" | ".join(rows[-1]), flush=True)
    print()
    print_table(
        ["folder", "size", "augment", "test acc %", "epochs", "wall s", "load (1 min)"], rows
    )
    print(f"{machine()} at the end; folders and runs in {workdir}")


if __name__ == "__main__":
    main()
