"""What the rest of the project relies on from the data module, whatever the data."""

from typing import Any

import torch
from torch.utils.data import DataLoader

from {{ cookiecutter.package_name }}.data import ImageDataModule


def batches(loader: DataLoader) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return list(loader)


def test_the_data_facts_are_consistent(data_args: dict[str, Any]) -> None:
    # Read from an instance: a data module may learn them from its files (an image folder).
    datamodule = ImageDataModule(**data_args)
    names = datamodule.class_names
    assert len(names) >= 2 and len(set(names)) == len(names), f"class_names: {names}"
    assert all(isinstance(name, str) and name for name in names), "class names must be strings"
    channels = datamodule.channels
    assert len(datamodule.mean) == len(datamodule.std) == channels
    assert all(value > 0 for value in datamodule.std)
    assert len(datamodule.image_size) == 2 and min(datamodule.image_size) >= 8


def test_every_split_yields_uint8_images_and_labels_that_fit_the_facts(
    data_args: dict[str, Any],
) -> None:
    datamodule = ImageDataModule(**data_args)
    datamodule.setup("fit")
    datamodule.setup("test")
    shape = (datamodule.channels, *datamodule.image_size)
    for split in ("train", "val", "test"):
        loader = getattr(datamodule, f"{split}_dataloader")()
        seen = set()
        for images, labels in batches(loader):
            assert images.dtype == torch.uint8 and tuple(images.shape[1:]) == shape, split
            assert labels.dtype == torch.int64 and len(labels) == len(images), split
            assert labels.min() >= 0 and labels.max() < len(datamodule.class_names), split
            seen.update(labels.tolist())
        assert len(seen) >= 2, f"the {split} split holds a single class"


def test_validation_split_is_stable_and_apart_from_training(data_args: dict[str, Any]) -> None:
    first, second = ImageDataModule(**data_args), ImageDataModule(**data_args)
    first.setup("fit")
    second.setup("fit")
    val = torch.cat([images for images, _ in batches(first.val_dataloader())])
    again = torch.cat([images for images, _ in batches(second.val_dataloader())])
    assert torch.equal(val, again), "the same arguments must give the same validation split"
    val_images = {image.numpy().tobytes() for image in val}
    for images, _ in batches(first.train_dataloader()):
        assert not any(image.numpy().tobytes() in val_images for image in images)
