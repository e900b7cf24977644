"""Baked projects pass their own tests and their real entry points train and predict."""

import csv
import json
import re
from pathlib import Path

import pytest
from bakes import EVERY_OPTION, Bake, bake_suite, package_of, run_in, train_in, write_sample

# Python differs between bakes by data set, by wing and for the pretrained backbone: the other
# network and logger options change the config alone, and the command-line test below trains
# with each of those configs. The bake with every wing runs every test of the project; the
# default bake's quick suite, which a user's plain `pytest` runs, is run by test_customization
# (whatever a left-out wing would have left dangling shows there); the other IDX data set and
# the other network, the tests that read its data or name the network's settings; the
# backbone bake, its own tests.
OTHER_DATA_AND_NETWORK_TESTS = [
    "tests/test_data_contract.py",
    "tests/test_idx_files.py",
    "tests/test_train_predict.py",
    "tests/test_config.py",
    "tests/test_operations.py",
    "tests/test_tune.py::test_bad_input_is_one_line_and_starts_no_trial",
]
SIGTERM_IN_TRAINING = (
    "tests/test_resume.py::test_sigterm_leaves_a_run_that_resumes_to_the_same_end[train]"
)
SIGTERM_IN_TESTING = (
    "tests/test_resume.py::test_sigterm_leaves_a_run_that_resumes_to_the_same_end[test]"
)
SUITE_VARIANTS = [
    # Left to other tests of this suite: AOTInductor's export (the image_folder bake's, on RGB
    # images), a study shared on a journal file or PostgreSQL (test_scale_out's Slurm arrays),
    # a SIGTERM in a training step (this bake's in-process test stops the same fit the same way)
    # or in the test stage (nothing of the fit is left to lose there), and DDP's fit, test and
    # predict (test_scale_out's sbatch test runs all three on two processes under Slurm and
    # checks them against one process, as test_ddp does).
    (
        EVERY_OPTION,
        [
            *("-m", "slow or not slow", "-k", "not aoti"),
            *("--deselect", "tests/test_tune.py::test_two_workers_share_one_study[journal]"),
            *("--deselect", "tests/test_tune.py::test_two_workers_share_one_study[postgresql]"),
            *("--deselect", SIGTERM_IN_TRAINING),
            *("--deselect", SIGTERM_IN_TESTING),
            *("--deselect", "tests/test_ddp.py::test_ddp_fit_test_and_predict"),
        ],
    ),
    (
        {
            "dataset": "fashion_mnist",
            "model": "mlp",
            "tune": "yes",
            "logger": "none",
            "license": "none",
            "ci": "none",
        },
        OTHER_DATA_AND_NETWORK_TESTS,
    ),
    # The pretrained backbone's own tests: weights from a file, fine-tuning and its resume,
    # checkpoints that load without the weights, a ViT's input size; and export parity.
    (
        {"model": "backbone", "dataset": "image_folder"},
        [
            "tests/test_backbone.py",
            "tests/test_export.py::test_exported_model_matches_the_checkpoint_for_any_batch",
        ],
    ),
]


def variant_id(answers: dict[str, str]) -> str:
    return ",".join(f"{key}={value}" for key, value in answers.items()) or "defaults"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("answers", "selected"),
    SUITE_VARIANTS,
    ids=[variant_id(answers) for answers, _ in SUITE_VARIANTS],
)
def test_baked_project_passes_its_own_tests(
    bake: Bake, answers: dict[str, str], selected: list[str]
) -> None:
    summary = bake_suite(bake(**answers), *selected)
    assert re.match(r"\d+ passed", summary) and "skipped" not in summary, summary


@pytest.mark.slow
def test_train_then_predict_from_the_command_line(bake: Bake, tmp_path: Path) -> None:
    project = bake(model="mlp", logger="csv")
    data_args = write_sample(project, tmp_path / "data")
    run_dir = tmp_path / "runs"
    train_in(project, data_args, "--trainer.max_epochs=2", run_dir=run_dir)
    [summary_file] = run_dir.rglob("test_metrics.json")
    summary = json.loads(summary_file.read_text())
    best = Path(summary["best_checkpoint"])
    assert best.is_file() and (summary_file.parent / "config.yaml").is_file()
    assert list(run_dir.glob("*/version_0/metrics.csv")), "the config's CSV logger wrote no metrics"
    assert summary["test/acc"] > 0.9, "the sample is easy to learn: the fit did not learn"

    output = tmp_path / "predictions.csv"
    predict = [
        "-m",
        f"{package_of(project)}.inference.predict",
        f"--ckpt_path={best}",
        f"--output={output}",
    ]
    assert str(output) in run_in(project, *predict).stdout
    with output.open(newline="") as file:
        rows = list(csv.DictReader(file))
    assert [row["source"] for row in rows] == [f"test/{i}" for i in range(len(rows))]
    # The sample's test labels cycle through the ten classes, named by their digit.
    correct = sum(row["class_name"] == str(i % 10) for i, row in enumerate(rows))
    assert correct / len(rows) == pytest.approx(summary["test/acc"], abs=1e-6)
