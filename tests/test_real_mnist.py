"""Opt-in: one epoch of the default bake on real MNIST reaches the expected test accuracy."""

import json
import os
from pathlib import Path

import pytest
from bakes import Bake, train_in

MIN_TEST_ACCURACY = 0.987

DATA_DIR = os.environ.get("MNIST_DATA_DIR")


@pytest.mark.slow
@pytest.mark.skipif(not DATA_DIR, reason="set MNIST_DATA_DIR to a folder holding MNIST/raw")
def test_one_epoch_on_real_mnist(bake: Bake, tmp_path: Path) -> None:
    data_dir = Path(DATA_DIR).resolve()
    assert (data_dir / "MNIST" / "raw").is_dir(), f"MNIST_DATA_DIR={DATA_DIR} holds no MNIST/raw"
    train_in(
        bake(),
        {"data_dir": data_dir},
        "--trainer.max_epochs=1",
        "--trainer.enable_progress_bar=false",
        run_dir=tmp_path,
        timeout=900,
    )
    [summary_file] = tmp_path.rglob("test_metrics.json")
    accuracy = json.loads(summary_file.read_text())["test/acc"]
    print(f"real MNIST, 1 epoch: test accuracy {accuracy:.4f}")
    assert accuracy >= MIN_TEST_ACCURACY
