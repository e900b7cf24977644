"""The image_folder option: a bake trains, tests, predicts and exports on a folder of images
given by --data.data_dir alone, and passes its own test suite."""

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from bakes import Bake, bake_suite, run_in, write_sample


@pytest.fixture(scope="module")
def project(bake: Bake) -> Path:
    return bake(dataset="image_folder")


@pytest.fixture(scope="module")
def image_tree(project: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bake's own sample (three classes; PNG, JPEG, WebP, GIF, BMP and TIFF files of
    several sizes; grayscale, 16-bit, RGB, RGBA and palette images) and one corrupt file."""
    folder = tmp_path_factory.mktemp("images")
    write_sample(project, folder)
    (folder / "train" / "middle" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 cut short")
    return folder


def train_command(data_dir: Path, run_dir: Path, *extra: str) -> list[str]:
    # The default config as a user runs it, with fewer epochs and smaller batches to be quick.
    return [
        "-m",
        "mnist_lab.train",
        f"--data.data_dir={data_dir}",
        "--trainer.max_epochs=3",
        "--data.batch_size=16",
        "--trainer.devices=1",
        "--trainer.enable_progress_bar=false",
        f"--trainer.default_root_dir={run_dir}",
        *extra,
    ]


def test_image_folder_bake_has_its_own_data_module_and_tests(project: Path) -> None:
    tests = {path.name for path in (project / "tests").glob("test_*.py")}
    assert "test_image_folder.py" in tests and "test_idx_files.py" not in tests
    assert not list(project.rglob("_*image_*.py")), "the hook left a template file"
    assert "class ImageDataModule" in (project / "src/mnist_lab/data.py").read_text()


@pytest.mark.slow
def test_image_folder_bake_passes_its_own_tests(project: Path) -> None:
    # Its whole suite, slow tests included: DDP (each process opens the image cache), resume,
    # the checkpoint writes and every export format run on its RGB images. A real SIGTERM to
    # a training process is the every-option bake's: it stops a fit the same way here.
    summary = bake_suite(
        project,
        "-m",
        "slow or not slow",
        "--deselect",
        "tests/test_resume.py::test_sigterm_leaves_a_run_that_resumes_to_the_same_end",
    )
    assert re.match(r"\d+ passed", summary) and "skipped" not in summary, summary


@pytest.mark.slow
def test_data_dir_alone_trains_predicts_and_exports(
    project: Path, image_tree: Path, tmp_path: Path
) -> None:
    run_dir = tmp_path / "runs"
    # The corrupt file stops the run with one line that names it ...
    refused = subprocess.run(
        [sys.executable, *train_command(image_tree, run_dir)],
        cwd=project,
        env={**os.environ, "PYTHONPATH": str(project / "src")},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert refused.returncode == 1
    # The folder's images come in four sizes, equally often: auto takes the first it met.
    assert "image_size auto: [40, 40]" in refused.stderr and "channels auto: 3" in refused.stderr
    last_line = refused.stderr.strip().splitlines()[-1]
    assert last_line.startswith("error: 1 image(s) cannot be read: ")
    assert str(image_tree / "train/middle/corrupt.jpg") in last_line
    assert "--data.skip_bad_images true" in last_line
    assert not run_dir.exists(), "a refused run left files behind"

    # ... and is left out when asked, from the cache that the refused run wrote.
    trained = run_in(project, *train_command(image_tree, run_dir, "--data.skip_bad_images=true"))
    assert "left out 1 unreadable image(s)" in trained.stderr
    assert "Reading" not in trained.stderr, "the second start decoded the images again"
    [summary_file] = run_dir.rglob("test_metrics.json")
    summary = json.loads(summary_file.read_text())
    assert summary["test/acc"] > 0.8, summary
    for picture in ("confusion_matrix.png", "misclassified.png"):
        assert (summary_file.parent / picture).is_file(), picture
    best = Path(summary["best_checkpoint"])

    output = tmp_path / "predictions.csv"
    args = [f"--ckpt_path={best}", f"--input={image_tree / 'test'}", f"--output={output}"]
    run_in(project, "-m", "mnist_lab.inference.predict", *args)
    with output.open(newline="") as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == 108
    correct = [row["class_name"] == Path(row["source"]).parent.name for row in rows]
    assert sum(correct) / len(rows) > 0.8, rows[:3]

    onnx_file = tmp_path / "model.onnx"
    args = [f"--ckpt_path={best}", "--format=onnx", f"--output={onnx_file}"]
    run_in(project, "-m", "mnist_lab.inference.export", *args)
    # The bake's own tests check the exported outputs; here, the input shape of this data.
    onnxruntime = pytest.importorskip("onnxruntime")
    [images] = onnxruntime.InferenceSession(str(onnx_file)).get_inputs()
    assert images.shape[1:] == [3, 40, 40]
