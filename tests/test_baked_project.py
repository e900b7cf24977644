"""Baked projects pass their own tests and their real entry points train and predict."""

import csv
import json
import re
from pathlib import Path

import pytest
from conftest import Bake, run_in, synthetic_mnist

# The default bake, the other network, and the other data set without a logger or extras.
VARIANTS = [
    {},
    {"model": "mlp", "logger": "csv"},
    {"dataset": "fashion_mnist", "logger": "none", "license": "none", "ci": "none"},
]


def variant_id(answers: dict[str, str]) -> str:
    return ",".join(f"{key}={value}" for key, value in answers.items()) or "defaults"


@pytest.mark.slow
@pytest.mark.parametrize("answers", VARIANTS, ids=variant_id)
def test_baked_project_passes_its_own_tests(bake: Bake, answers: dict[str, str]) -> None:
    completed = run_in(bake(**answers), "-m", "pytest", "-q", "-p", "no:cacheprovider")
    summary = completed.stdout.strip().splitlines()[-1]
    assert re.match(r"\d+ passed", summary) and "skipped" not in summary, summary


@pytest.mark.slow
@pytest.mark.parametrize("answers", VARIANTS[:2], ids=variant_id)
def test_train_then_predict_from_the_command_line(
    bake: Bake, answers: dict[str, str], tmp_path: Path
) -> None:
    project = bake(**answers)
    data_dir = synthetic_mnist(project, tmp_path / "data")
    run_dir = tmp_path / "runs"
    run_in(
        project,
        "-m",
        "mnist_lab.train",
        "--config",
        "configs/default.yaml",
        f"--data.data_dir={data_dir}",
        "--data.val_size=128",
        "--trainer.max_epochs=1",
        "--trainer.limit_train_batches=4",
        "--trainer.devices=1",
        f"--trainer.default_root_dir={run_dir}",
        f"--trainer.logger.init_args.save_dir={run_dir}",
    )
    [summary_file] = run_dir.rglob("test_metrics.json")
    summary = json.loads(summary_file.read_text())
    best = Path(summary["best_checkpoint"])
    assert best.is_file() and (summary_file.parent / "config.yaml").is_file()
    assert 0 <= summary["test/acc"] <= 1

    output = tmp_path / "predictions.csv"
    predicted = run_in(
        project,
        "-m",
        "mnist_lab.predict",
        f"--ckpt_path={best}",
        f"--input={data_dir}",
        f"--output={output}",
    )
    assert str(output) in predicted.stdout
    with output.open(newline="") as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == 128
    assert all(0 <= int(row["predicted"]) <= 9 for row in rows)
    assert all(0 < float(row["confidence"]) <= 1 for row in rows)
