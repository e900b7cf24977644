"""The IDX-file loading of data.py: splits, missing or broken files, bad arguments.

These tests cover data.py as generated; when data.py is replaced by a module for other data,
they skip, and test_data_contract.py keeps checking what the rest of the project relies on.
"""

import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from {{ cookiecutter.package_name }} import data
from {{ cookiecutter.package_name }}.support.errors import DatasetError

if not hasattr(data, "RAW_FILES"):
    pytest.skip("data.py no longer reads IDX files", allow_module_level=True)


def test_split_sizes_and_seed(data_args: dict[str, Any]) -> None:
    datamodule = data.ImageDataModule(**data_args)
    datamodule.setup("fit")
    datamodule.setup("test")
    sizes = {split: len(dataset) for split, dataset in datamodule.datasets.items()}
    assert sizes == {"train": 512, "val": 128, "test": 127}
    other_seed = data.ImageDataModule(**{**data_args, "split_seed": 1})
    other_seed.setup("fit")
    val = datamodule.datasets["val"].images
    assert not torch.equal(other_seed.datasets["val"].images, val)


def test_missing_data_names_the_folder_and_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_network(self: object) -> None:
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz")

    monkeypatch.setattr(data.DATASET, "download", no_network)
    with pytest.raises(DatasetError) as error:
        data.ImageDataModule(data_dir=str(tmp_path)).prepare_data()
    assert str(data.raw_folder(tmp_path)) in str(error.value)
    assert all(name in str(error.value) for name in data.RAW_FILES)


def test_truncated_file_is_named(data_args: dict[str, Any], tmp_path: Path) -> None:
    shutil.copytree(data.raw_folder(data_args["data_dir"]), data.raw_folder(tmp_path))
    truncated = data.raw_folder(tmp_path) / "train-images-idx3-ubyte"
    truncated.write_bytes(truncated.read_bytes()[:1000])
    with pytest.raises(DatasetError, match="train-images-idx3-ubyte is truncated or corrupt"):
        data.ImageDataModule(**{**data_args, "data_dir": str(tmp_path)}).setup("fit")


def test_validation_set_must_leave_training_images(data_args: dict[str, Any]) -> None:
    datamodule = data.ImageDataModule(**{**data_args, "val_size": 640})
    with pytest.raises(DatasetError, match="val_size 640 leaves no training images"):
        datamodule.setup("fit")


@pytest.mark.parametrize(
    ("name", "value"), [("val_size", 0), ("val_size", -1), ("batch_size", 0), ("num_workers", -1)]
)
def test_out_of_range_arguments_are_refused(name: str, value: int) -> None:
    with pytest.raises(DatasetError, match=f"--data.{name} must be at least"):
        data.ImageDataModule(**{name: value})


def test_labels_outside_the_classes_are_named(data_args: dict[str, Any], tmp_path: Path) -> None:
    shutil.copytree(data.raw_folder(data_args["data_dir"]), data.raw_folder(tmp_path))
    labels = data.raw_folder(tmp_path) / "train-labels-idx1-ubyte"
    content = bytearray(labels.read_bytes())
    content[-1] = 12  # the last training label
    labels.write_bytes(bytes(content))
    with pytest.raises(DatasetError, match="train-labels-idx1-ubyte holds label 12"):
        data.ImageDataModule(**{**data_args, "data_dir": str(tmp_path)}).setup("fit")
