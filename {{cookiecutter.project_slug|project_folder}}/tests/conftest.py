from pathlib import Path

import pytest
from synthetic_mnist import write_synthetic_mnist


@pytest.fixture(scope="session")
def mnist_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data folder holding synthetic MNIST files (640 train, 128 test images)."""
    return write_synthetic_mnist(tmp_path_factory.mktemp("data"))
