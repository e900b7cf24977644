"""Fixtures shared by the tests: a data sample written by the data module itself, and fits.

Everything here goes through ``ImageDataModule``'s own API, so replacing ``data.py`` with a
module for other data (that also provides ``write_sample``) keeps every test meaningful.
"""

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from {{ cookiecutter.package_name }}.data import ImageDataModule
from {{ cookiecutter.package_name }}.train import TrainCLI, train

PROJECT = Path(__file__).resolve().parents[1]

# Small, quick fits on one CPU process; tests add or override flags after these.
QUICK_FIT = [
    "--trainer.max_epochs=2",
    "--trainer.accelerator=cpu",
    "--trainer.devices=1",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
]

Fit = Callable[..., TrainCLI]


def as_flags(data_args: dict[str, Any]) -> list[str]:
    """``--data.*`` flags that give the data module these arguments."""
    return [
        f"--data.{name}={value if isinstance(value, str) else json.dumps(value)}"
        for name, value in data_args.items()
    ]


@pytest.fixture(scope="session")
def data_args(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Arguments of ``ImageDataModule`` that load the small sample it wrote for the tests."""
    return ImageDataModule.write_sample(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="session")
def data_flags(data_args: dict[str, Any]) -> list[str]:
    return as_flags(data_args)


@pytest.fixture(scope="session")
def steps_per_epoch(data_args: dict[str, Any]) -> int:
    datamodule = ImageDataModule(**data_args)
    datamodule.setup("fit")
    steps = len(datamodule.train_dataloader())
    assert steps >= 4, "write_sample's data should give at least 4 training batches"
    return steps


@pytest.fixture(scope="session")
def fit(data_flags: list[str]) -> Fit:
    """Train in this process, in ``workdir``, on the sample; extra flags win."""

    def fit_in(workdir: Path, *extra: str) -> TrainCLI:
        with pytest.MonkeyPatch.context() as patch:
            patch.chdir(workdir)
            return train([*data_flags, *QUICK_FIT, *extra])

    return fit_in


@pytest.fixture(scope="session")
def child_env() -> dict[str, str]:
    """Environment for commands run in a subprocess: the package and test helpers importable."""
    paths = [str(PROJECT / "src"), str(PROJECT / "tests"), os.environ.get("PYTHONPATH", "")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
