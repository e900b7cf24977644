"""Fixtures shared by the tests: a data sample written by the data module itself, and fits.

Everything here goes through ``ImageDataModule``'s own API, so replacing ``data.py`` with a
module for other data (that also provides ``write_sample``) keeps every test meaningful.
"""

import os
from pathlib import Path
from typing import Any

import pytest
from helpers import PROJECT, Fit, Run, as_flags, quick_fit

from {{ cookiecutter.package_name }}.data import ImageDataModule


@pytest.fixture(scope="session")
def data_args(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Arguments of ``ImageDataModule`` that load the small sample it wrote for the tests."""
    return ImageDataModule.write_sample(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="session")
def data_flags(data_args: dict[str, Any]) -> list[str]:
    return as_flags("data", data_args)


@pytest.fixture(scope="session")
def steps_per_epoch(data_args: dict[str, Any]) -> int:
    datamodule = ImageDataModule(**data_args)
    datamodule.setup("fit")
    return len(datamodule.train_dataloader())


@pytest.fixture(scope="session")
def fit(data_flags: list[str]) -> Fit:
    """Train in this process, in a working folder, on the sample; extra flags win."""
    return quick_fit(data_flags)


@pytest.fixture(scope="session")
def trained(fit: Fit, tmp_path_factory: pytest.TempPathFactory) -> Run:
    """One short fit with the config's logger, shared by the tests that use a trained model."""
    workdir = tmp_path_factory.mktemp("trained")
    return Run(fit(workdir, "--trainer.log_every_n_steps=1"), workdir)


@pytest.fixture(scope="session")
def child_env() -> dict[str, str]:
    """Environment for commands run in a subprocess: the package and test helpers importable."""
    paths = [str(PROJECT / "src"), str(PROJECT / "tests"), os.environ.get("PYTHONPATH", "")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The test's own folder as the working folder, where commands write logs/."""
    monkeypatch.chdir(tmp_path)
    return tmp_path
