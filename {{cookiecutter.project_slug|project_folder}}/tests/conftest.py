import os
from pathlib import Path

import pytest
from synthetic_mnist import write_synthetic_mnist

PROJECT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def mnist_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data folder holding synthetic raw files (640 train, 128 test images)."""
    return write_synthetic_mnist(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="session")
def child_env() -> dict[str, str]:
    """Environment for commands run in a subprocess: the package and test helpers importable."""
    paths = [str(PROJECT / "src"), str(PROJECT / "tests"), os.environ.get("PYTHONPATH", "")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
