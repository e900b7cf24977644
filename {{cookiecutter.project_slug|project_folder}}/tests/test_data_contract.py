"""The data contract of data.py, rule by rule: what the rest of the project relies on from the
data module, whatever the data. Each failure names the rule it breaks."""

from typing import Any

import torch

from {{ cookiecutter.package_name }}.data import ImageDataModule

FACTS = ("class_names", "channels", "image_size", "mean", "std")


def test_rule_1_the_facts_exist_after_init_and_agree(data_args: dict[str, Any]) -> None:
    datamodule = ImageDataModule(**data_args)  # not set up: the facts must be there already
    missing = [fact for fact in FACTS if not hasattr(datamodule, fact)]
    assert not missing, f"rule 1: set {', '.join(missing)} in __init__ (data.py docstring)"
    names = datamodule.class_names
    assert len(names) >= 2 and len(set(names)) == len(names), f"rule 1: class_names {names}"
    assert all(isinstance(name, str) and name for name in names), "rule 1: names are strings"
    channels = datamodule.channels
    assert len(datamodule.mean) == len(datamodule.std) == channels, (
        "rule 1: mean and std hold one value per channel"
    )
    assert all(0 <= value <= 255 for value in datamodule.mean), "rule 1: mean on the 0-255 scale"
    assert all(0 < value <= 255 for value in datamodule.std), "rule 1: std on the 0-255 scale"
    assert len(datamodule.image_size) == 2, "rule 1: image_size is (height, width)"


def test_rule_2_init_records_its_arguments(data_args: dict[str, Any]) -> None:
    datamodule = ImageDataModule(**data_args)
    recorded = dict(datamodule.hparams)
    assert recorded, "rule 2: __init__ must call self.save_hyperparameters()"
    assert all(recorded.get(name) == value for name, value in data_args.items()), (
        f"rule 2: save_hyperparameters() must record the arguments: {recorded} vs {data_args}"
    )


def test_rule_3_every_split_yields_uint8_images_and_int64_labels(
    data_args: dict[str, Any],
) -> None:
    datamodule = ImageDataModule(**data_args)
    datamodule.setup("fit")
    datamodule.setup("test")
    shape = (datamodule.channels, *datamodule.image_size)
    for split in ("train", "val", "test"):
        seen = set()
        for images, labels in getattr(datamodule, f"{split}_dataloader")():
            assert images.dtype == torch.uint8, f"rule 3: {split} images are {images.dtype}"
            assert tuple(images.shape[1:]) == shape, f"rule 3: {split} images of {images.shape}"
            assert torch.is_tensor(labels) and labels.dtype == torch.int64, (
                f"rule 3: {split} labels must be an int64 tensor"
            )
            assert len(labels) == len(images), f"rule 3: {split} has as many labels as images"
            assert labels.min() >= 0 and labels.max() < len(datamodule.class_names), (
                f"rule 3: {split} labels must be in range(len(class_names))"
            )
            seen.update(labels.tolist())
        assert len(seen) >= 2, f"rule 3: the {split} split holds a single class"


def test_rule_4_the_sample_is_large_enough_for_the_tests(data_args: dict[str, Any]) -> None:
    datamodule = ImageDataModule(**data_args)
    datamodule.setup("fit")
    datamodule.setup("test")
    batches = {
        split: len(getattr(datamodule, f"{split}_dataloader")())
        for split in ("train", "val", "test")
    }
    least = {"train": 4, "val": 2, "test": 2}
    short = {split: count for split, count in batches.items() if count < least[split]}
    assert not short, f"rule 4: write_sample gives {short} batches; it needs at least {least}"


def test_validation_split_is_stable_and_apart_from_training(data_args: dict[str, Any]) -> None:
    first, second = ImageDataModule(**data_args), ImageDataModule(**data_args)
    first.setup("fit")
    second.setup("fit")
    val = torch.cat([images for images, _ in first.val_dataloader()])
    again = torch.cat([images for images, _ in second.val_dataloader()])
    assert torch.equal(val, again), "the same arguments must give the same validation split"
    val_images = {image.numpy().tobytes() for image in val}
    for images, _ in first.train_dataloader():
        assert not any(image.numpy().tobytes() in val_images for image in images)
