"""The image-folder loading of data.py: layout, class order, splits, cache, augmentation, errors.

These tests cover data.py as generated; when data.py is replaced by a module for other data,
they skip, and test_data_contract.py keeps checking what the rest of the project relies on.
"""

import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
import yaml
from helpers import Fit, mounted_tmpfs
from PIL import Image

from {{ cookiecutter.package_name }} import data, image_cache
from {{ cookiecutter.package_name }}.support.errors import DatasetError
from {{ cookiecutter.package_name }}.train import DEFAULT_CONFIG

if not hasattr(data, "held_out"):
    pytest.skip("data.py no longer reads an image folder", allow_module_level=True)


def write_tree(root: Path, counts: dict[str, dict[str, int]], size: int = 12) -> Path:
    """PNG files ``root/<split>/<class>/<n>.png``; each image's gray level is unique."""
    level = 0
    for split, classes in counts.items():
        for name, count in classes.items():
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for index in range(count):
                level += 1
                image = Image.new("L", (size, size), level % 256)
                image.save(root / split / name / f"{index}.png")
    return root


def module(root: Path, **arguments: Any) -> data.ImageDataModule:
    return data.ImageDataModule(data_dir=str(root), image_size=[8, 8], channels=1, **arguments)


def images_of(datamodule: data.ImageDataModule, split: str) -> torch.Tensor:
    loader = getattr(datamodule, f"{split}_dataloader")()
    return torch.cat([images for images, _ in loader])


def labels_of(datamodule: data.ImageDataModule, split: str) -> torch.Tensor:
    loader = getattr(datamodule, f"{split}_dataloader")()
    return torch.cat([labels for _, labels in loader])


@pytest.fixture
def sample(data_args: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    """A private copy of the tests' sample folder, free to change."""
    shutil.copytree(data_args["data_dir"], tmp_path / "sample", ignore=shutil.ignore_patterns(".*"))
    return {**data_args, "data_dir": str(tmp_path / "sample")}


def test_every_format_size_and_mode_is_read(data_args: dict[str, Any]) -> None:
    datamodule = data.ImageDataModule(**data_args)
    files = [p for p in Path(data_args["data_dir"]).rglob("*.*") if ".cache" not in p.parts]
    assert {p.suffix for p in files} == {".png", ".jpg", ".webp", ".gif", ".bmp", ".tiff"}
    images = datamodule.cache["images"]
    assert images.shape == (len(files), 3, 32, 32) and bool(datamodule.cache["readable"].all())
    # Every image keeps its bright bar over dark noise: 16-bit ones scaled, not truncated.
    brightest, darkest = images.flatten(1).max(1).values, images.flatten(1).min(1).values
    assert bool((brightest > 150).all() and (darkest < 80).all())


def test_class_names_are_the_sorted_folder_names(tmp_path: Path) -> None:
    # Names that differ only in case would share a folder on macOS and Windows.
    classes = {"b": 2, "C": 2, "a": 2, "a b": 2, ".ipynb_checkpoints": 0}
    datamodule = module(write_tree(tmp_path, {"train": classes}), val_size=1, test_size=1)
    assert datamodule.class_names == ("C", "a", "a b", "b")
    datamodule.setup("fit")
    for path, label in zip(datamodule.cache["paths"], datamodule.cache["labels"], strict=True):
        assert Path(path).parts[1] == datamodule.class_names[label], path


def test_statistics_are_those_of_the_training_images(tmp_path: Path) -> None:
    root = tmp_path / "data"
    for split, colour in (("train", (10, 100, 200)), ("test", (255, 255, 255))):
        for name in ("x", "y"):
            (root / split / name).mkdir(parents=True)
            Image.new("RGB", (8, 8), colour).save(root / split / name / "0.png")
    Image.new("RGB", (8, 8), (30, 100, 200)).save(root / "train" / "y" / "1.png")
    datamodule = data.ImageDataModule(data_dir=str(root), image_size=[8, 8], val_size=1)
    assert datamodule.mean == pytest.approx((50 / 3, 100, 200))
    assert datamodule.std[0] == pytest.approx((800 / 9) ** 0.5)
    # A constant channel gets std 1 rather than a division by zero.
    assert datamodule.std[1:] == (1, 1)


def test_held_out_splits_are_seeded_disjoint_and_keep_class_shares(tmp_path: Path) -> None:
    root = write_tree(tmp_path, {"train": {"big": 60, "small": 20}})
    datamodule = module(root, val_size=0.25, test_size=8)
    datamodule.setup("fit")
    datamodule.setup("test")
    # Each image is one gray level, unique to it.
    levels = {split: images_of(datamodule, split)[:, 0, 0, 0] for split in ("train", "val", "test")}
    assert [len(split) for split in levels.values()] == [52, 20, 8]
    levels = torch.cat(list(levels.values())).tolist()
    assert sorted(levels) == list(range(1, 81)), "the splits overlap or lose images"
    assert labels_of(datamodule, "val").bincount().tolist() == [15, 5]
    assert labels_of(datamodule, "test").bincount().tolist() == [6, 2]
    again = module(root, val_size=0.25, test_size=8)
    again.setup("fit")
    assert torch.equal(images_of(again, "val"), images_of(datamodule, "val"))
    other_seed = module(root, val_size=0.25, test_size=8, split_seed=1)
    other_seed.setup("fit")
    assert not torch.equal(images_of(other_seed, "val"), images_of(datamodule, "val"))


def test_val_and_test_folders_replace_the_held_out_splits(tmp_path: Path) -> None:
    counts = {"train": {"a": 5, "b": 5}, "val": {"a": 2, "b": 1}, "test": {"a": 1, "b": 3}}
    datamodule = module(write_tree(tmp_path, counts), val_size=0.5, test_size=0.5)
    datamodule.setup("fit")
    datamodule.setup("test")
    assert labels_of(datamodule, "val").tolist() == [0, 0, 1]
    assert labels_of(datamodule, "test").tolist() == [0, 1, 1, 1]
    assert len(labels_of(datamodule, "train")) == 10


def test_second_start_reads_the_cache_and_a_changed_folder_is_read_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads = []
    read_all = image_cache.read_all
    monkeypatch.setattr(image_cache, "read_all", lambda *args: reads.append(1) or read_all(*args))
    root = write_tree(tmp_path, {"train": {"a": 4, "b": 4}})
    first = module(root, val_size=2, test_size=2)
    [cache] = (root / ".cache").glob("*.pt")
    second = module(root, val_size=3, test_size=1, split_seed=5)
    assert len(reads) == 1, "the cache was not used, or split settings invalidated it"
    assert second.mean == first.mean

    Image.new("L", (12, 12), 200).save(root / "train" / "a" / "new.png")
    assert len(module(root, val_size=2, test_size=2).cache["paths"]) == 9
    one_file = root / "train" / "b" / "0.png"
    Image.new("L", (12, 12), 201).save(one_file)  # same name and size, new content
    os.utime(one_file, ns=(one_file.stat().st_atime_ns, one_file.stat().st_mtime_ns + 10**9))
    changed = module(root, val_size=2, test_size=2)
    assert 201 in changed.cache["images"].flatten().tolist()
    assert len(reads) == 3
    assert not cache.exists(), "a cache of an earlier state of the folder was kept"

    data.ImageDataModule(data_dir=str(root), image_size=[9, 9], channels=1, val_size=2)
    assert len(reads) == 4, "other settings must not reuse the cache"
    assert len(list((root / ".cache").glob("*.pt"))) == 2, "caches of other settings stay"


def test_cache_folder_can_be_elsewhere(tmp_path: Path) -> None:
    root = write_tree(tmp_path / "data", {"train": {"a": 3, "b": 3}})
    module(root, val_size=1, test_size=1, cache_dir=str(tmp_path / "cache"))
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 1
    assert not (root / ".cache").exists()


def test_sets_above_max_cache_gb_stream_the_same_batches(sample: dict[str, Any]) -> None:
    cached = data.ImageDataModule(**sample)
    streamed = data.ImageDataModule(**{**sample, "max_cache_gb": 0, "num_workers": 1})
    assert "images" not in streamed.cache
    assert (streamed.mean, streamed.std) == (cached.mean, cached.std)
    for datamodule in (cached, streamed):
        datamodule.setup("fit")
        datamodule.setup("test")
    assert isinstance(streamed.datasets["train"], data.ImageFiles)
    for split in ("val", "test"):
        assert torch.equal(images_of(streamed, split), images_of(cached, split)), split
        assert torch.equal(labels_of(streamed, split), labels_of(cached, split)), split


class SeenBatches(pl.Callback):
    """Keep the first batch each stage hands the model, after the copy to its device."""

    def __init__(self) -> None:
        self.seen: dict[str, torch.Tensor] = {}

    def on_train_batch_start(
        self, trainer: pl.Trainer, module: Any, batch: Any, *args: Any
    ) -> None:
        self.seen.setdefault("train", batch[0])

    def on_validation_batch_start(
        self, trainer: pl.Trainer, module: Any, batch: Any, *args: Any
    ) -> None:
        if not trainer.sanity_checking:
            self.seen.setdefault("val", batch[0])

    def on_test_batch_start(self, trainer: pl.Trainer, module: Any, batch: Any, *args: Any) -> None:
        self.seen.setdefault("test", batch[0])


def test_only_training_batches_are_augmented_each_image_its_own_way(
    fit: Fit, tmp_path: Path
) -> None:
    seen = SeenBatches()
    cli = fit(tmp_path, "--trainer.max_epochs=1", callbacks=[seen])
    datamodule = cli.datamodule
    plain = {
        split: next(iter(getattr(datamodule, f"{split}_dataloader")()))[0]
        for split in ("val", "test")
    }
    for split in ("val", "test"):
        assert torch.equal(seen.seen[split], plain[split]), f"{split} images were changed"
    augmented = seen.seen["train"]
    assert augmented.dtype == torch.float32 and augmented.shape[1:] == plain["val"].shape[1:]
    # Every image its own crop, flip and colours: no two changed alike.
    originals = datamodule.datasets["train"].images
    assert not any(
        torch.equal(image, original.float()) for image in augmented for original in originals[:64]
    )


def test_augmentation_draws_per_image_and_keeps_the_pixel_range() -> None:
    same = torch.randint(0, 256, (1, 3, 16, 16), dtype=torch.uint8).expand(32, -1, -1, -1)
    changed = data.Augment()(same)
    assert changed.shape == same.shape and changed.min() >= 0 and changed.max() <= 255
    distinct = {image.numpy().tobytes() for image in changed}
    assert len(distinct) == len(same), "images of one batch drew the same changes"
    unchanged = data.Augment(crop_scale=(1.0, 1.0), flip=False, jitter=0.0)
    square = unchanged(torch.randint(0, 256, (8, 1, 12, 12), dtype=torch.uint8))
    assert square.shape == (8, 1, 12, 12)


def mirrored(augment: data.Augment, count: int = 512) -> int:
    """How many of ``count`` copies of a left-to-right ramp come out darker on the right."""
    ramp = torch.arange(16, dtype=torch.uint8).mul(15).expand(count, 1, 16, 16)
    changed = augment(ramp)
    return int((changed[..., :8].mean((1, 2, 3)) > changed[..., 8:].mean((1, 2, 3))).sum())


def test_the_default_augmentation_never_mirrors_an_image() -> None:
    # A mirrored digit or letter is another one: flips are asked for, never a default.
    section = yaml.safe_load(DEFAULT_CONFIG.read_text())["data"]["augment"]
    assert mirrored(data.Augment(**section)) == 0
    assert mirrored(data.Augment()) == 0
    assert 128 < mirrored(data.Augment(**{**section, "flip": True})) < 384


@pytest.mark.parametrize(
    ("augment", "message"),
    [({"crop_scale": [0.0, 1.0]}, "crop_scale"), ({"jitter": 1.5}, "jitter")],
    ids=["no-area", "too-much-jitter"],
)
def test_augmentation_values_out_of_range_are_refused(
    data_args: dict[str, Any], augment: dict, message: str
) -> None:
    with pytest.raises(DatasetError, match=f"--data.augment.{message}"):
        data.ImageDataModule(**data_args, augment=data.Augment(**augment))


def test_auto_sizes_fit_the_folder_and_an_explicit_size_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "gray"
    for index, (width, height) in enumerate([(8, 8)] * 5 + [(20, 10)] * 3):
        folder = root / "train" / ("a" if index % 2 else "b")
        folder.mkdir(parents=True, exist_ok=True)
        Image.new("L", (width, height), 40 * index).save(folder / f"{index}.png")
    auto = data.ImageDataModule(data_dir=str(root), val_size=1, test_size=1)
    assert (auto.image_size, auto.channels) == ((8, 8), 1), "most common size, all grayscale"
    assert data.ImageDataModule(
        data_dir=str(root), image_size=[16, 12], val_size=1, test_size=1
    ).image_size == (16, 12)
    Image.new("RGB", (400, 300), (200, 10, 10)).save(root / "train" / "a" / "colour.png")
    for index in range(9):
        Image.new("RGB", (400, 300)).save(root / "train" / "b" / f"big{index}.png")
    colour = data.ImageDataModule(data_dir=str(root), val_size=1, test_size=1)
    assert (colour.image_size, colour.channels) == ((96, 128), 3), "capped at 128 a side"
    larger = data.ImageDataModule(data_dir=str(root), auto_max_side=224, val_size=1, test_size=1)
    assert larger.image_size == (168, 224), "capped where asked"
    # A second start remembers what auto picked: no header is read again.
    monkeypatch.setattr(data, "auto_sizes", None)
    with pytest.raises(TypeError):
        data.ImageDataModule(data_dir=str(root), val_size=1, test_size=1)


def test_swapped_class_folders_are_read_with_their_new_labels(tmp_path: Path) -> None:
    root = write_tree(tmp_path, {"train": {"a": 4, "b": 4}})
    train = root / "train"
    for path in train.rglob("*.png"):  # the same names, sizes and times in both folders
        os.utime(path, ns=(1_000_000_000, 1_000_000_000))
    first = module(root, val_size=2, test_size=2)
    (train / "a").rename(train / "swap")
    (train / "b").rename(train / "a")
    (train / "swap").rename(train / "b")
    second = module(root, val_size=2, test_size=2)
    for label in (0, 1):
        was = first.cache["images"][first.cache["labels"] == 1 - label]
        assert torch.equal(second.cache["images"][second.cache["labels"] == label], was)


AUTO_DAMAGE = {
    "empty": "",
    "cut": '{"image_size": [8, ',
    "wrong types": '{"image_size": "8x8", "channels": "1"}',
    "zero size": '{"image_size": [0, 0], "channels": 1}',
    "negative": '{"image_size": [-8, 8], "channels": 1}',
    "not an object": "[8, 8]",
}


@pytest.mark.parametrize("damage", AUTO_DAMAGE.values(), ids=AUTO_DAMAGE.keys())
def test_a_damaged_auto_choice_is_named_and_picked_again(tmp_path: Path, damage: str) -> None:
    root = write_tree(tmp_path, {"train": {"a": 3, "b": 3}}, size=10)
    first = data.ImageDataModule(data_dir=str(root), val_size=1, test_size=1)
    [remembered] = (root / ".cache").glob("auto-*.json")
    saved = remembered.read_text()
    remembered.write_text(damage)
    with pytest.warns(UserWarning, match=f"ignored the damaged {re.escape(str(remembered))}"):
        again = data.ImageDataModule(data_dir=str(root), val_size=1, test_size=1)
    assert (again.image_size, again.channels) == (first.image_size, first.channels) == ((10, 10), 1)
    assert remembered.read_text() == saved, "written again, whole"


def test_linked_class_folders_and_sub_folders_are_followed_once(tmp_path: Path) -> None:
    root = write_tree(tmp_path / "data", {"train": {"a": 3}})
    elsewhere = write_tree(tmp_path / "elsewhere", {"b": {"images": 3}, "more": {"a": 2}})
    (root / "train" / "b").symlink_to(elsewhere / "b" / "images", target_is_directory=True)
    (root / "train" / "a" / "more").symlink_to(elsewhere / "more" / "a")
    (root / "train" / "a" / "loop").symlink_to("..")  # back to train/: read once, no hang
    class_names, _, labels, _ = data.list_images(root)
    assert class_names == ["a", "b"]
    assert labels.count(0) == 3 + 2 and labels.count(1) == 3


def test_auto_size_of_long_thin_images_is_the_size_it_prints(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "thin"
    for index in range(4):
        folder = root / "train" / ("a" if index % 2 else "b")
        folder.mkdir(parents=True, exist_ok=True)
        Image.new("L", (10, 1000), 60 * index).save(folder / f"{index}.png")
    with caplog.at_level(logging.INFO):
        thin = data.ImageDataModule(data_dir=str(root), val_size=1, test_size=1)
    # 1000x10 scaled to 128 a side would be 1 pixel wide: the narrow side stops at 8.
    assert thin.image_size == (128, 8)
    assert "image_size auto: [128, 8]" in caplog.text


def test_a_damaged_cache_is_read_again(tmp_path: Path) -> None:
    root = write_tree(tmp_path, {"train": {"a": 4, "b": 4}})
    first = module(root, val_size=2, test_size=2)
    [cache] = (root / ".cache").glob("8x8x1-*.pt")
    content = bytearray(cache.read_bytes())
    images = first.cache["images"].numpy().tobytes()
    where = bytes(content).index(images[:64])
    content[where + 5] ^= 0xFF  # one pixel changed, the file still loads
    cache.write_bytes(bytes(content))
    with pytest.warns(UserWarning, match="checksum does not match"):
        again = module(root, val_size=2, test_size=2)
    assert torch.equal(again.cache["images"], first.cache["images"])


def test_unwritable_cache_folder_is_one_line_and_leaves_nothing(tmp_path: Path) -> None:
    root = write_tree(tmp_path / "data", {"train": {"a": 3, "b": 3}})
    (tmp_path / "file").write_text("a file, not a folder")
    with pytest.raises(
        DatasetError, match=r"cannot write .*: set --data.cache_dir to a writable folder"
    ):
        module(root, val_size=1, test_size=1, cache_dir=str(tmp_path / "file" / "cache"))
    assert not list(tmp_path.rglob("*partial*"))


def test_a_full_disk_while_caching_is_one_line_and_leaves_nothing(tmp_path: Path) -> None:
    root = write_tree(tmp_path / "data", {"train": {"a": 40, "b": 40}}, size=64)
    with mounted_tmpfs(tmp_path / "small", 64 * 1024) as small:
        with pytest.raises(DatasetError, match=r"No space left on device: set --data\.cache_dir"):
            data.ImageDataModule(
                data_dir=str(root),
                image_size=[64, 64],
                channels=3,
                cache_dir=str(small),
                val_size=1,
                test_size=1,
            )
        assert not list(small.rglob("*.pt*"))


def test_missing_train_folder_says_where_to_put_the_classes(tmp_path: Path) -> None:
    write_tree(tmp_path, {"cats": {"x": 1}, "dogs": {"x": 1}})
    with pytest.raises(DatasetError, match=r"has no train/ folder.*if cats, dogs"):
        module(tmp_path)
    with pytest.raises(DatasetError, match="does not exist"):
        module(tmp_path / "nowhere")


def test_one_class_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"at least two class folders.*found 1: only"):
        module(write_tree(tmp_path, {"train": {"only": 3}}))


def test_files_that_are_not_images_are_left_out_with_a_warning(tmp_path: Path) -> None:
    root = write_tree(tmp_path, {"train": {"a": 3, "b": 3}})
    (root / "train" / "a" / "notes.txt").write_text("not an image")
    (root / "train" / "a" / ".DS_Store").write_text("hidden: no warning")
    (root / "train" / "b" / ".ipynb_checkpoints").mkdir()
    Image.new("L", (8, 8)).save(root / "train" / "b" / ".ipynb_checkpoints" / "0.png")
    with pytest.warns(UserWarning, match=r"ignored 1 file\(s\) without an image .*notes\.txt"):
        datamodule = module(root, val_size=1, test_size=1)
    assert len(datamodule.cache["paths"]) == 6


def test_empty_class_folder_is_named(tmp_path: Path) -> None:
    root = write_tree(tmp_path, {"train": {"a": 3, "b": 3}})
    (root / "train" / "empty").mkdir()
    (root / "train" / "empty" / "notes.txt").write_text("no images here")
    folder = re.escape(str(root / "train" / "empty"))
    with pytest.raises(DatasetError, match=f"class folder {folder} holds no images"):
        module(root)


def test_test_folder_with_other_classes_is_refused(tmp_path: Path) -> None:
    root = write_tree(tmp_path, {"train": {"a": 2, "b": 2}, "test": {"a": 1, "c": 1}})
    with pytest.raises(DatasetError, match=r"test/ only: c; train/ only: b"):
        module(root)


def test_unreadable_image_is_named_or_skipped_with_a_warning(tmp_path: Path) -> None:
    root = write_tree(tmp_path, {"train": {"a": 4, "b": 4}})
    truncated = root / "train" / "b" / "2.png"
    truncated.write_bytes(truncated.read_bytes()[:40])
    with pytest.raises(DatasetError) as error:
        module(root, val_size=1, test_size=1)
    name = str(truncated)
    assert name in str(error.value) and "--data.skip_bad_images" in str(error.value)
    with pytest.warns(UserWarning, match=f"left out 1 unreadable image.*{re.escape(name)}"):
        datamodule = module(root, val_size=1, test_size=1, skip_bad_images=True)
    datamodule.setup("fit")
    datamodule.setup("test")
    assert sum(len(datamodule.datasets[split]) for split in ("train", "val", "test")) == 7


def test_same_image_in_train_and_test_gives_a_warning(tmp_path: Path) -> None:
    root = write_tree(tmp_path, {"train": {"a": 2, "b": 2}, "test": {"a": 1, "b": 1}})
    shutil.copy(root / "train" / "a" / "0.png", root / "test" / "b" / "copy.png")
    with pytest.warns(UserWarning, match="1 image.* also in train/, e.g. test/b/copy.png"):
        module(root, val_size=1)


def test_held_out_sizes_must_leave_training_images(tmp_path: Path) -> None:
    root = write_tree(tmp_path, {"train": {"a": 5, "b": 5}})
    with pytest.raises(DatasetError, match="leaves none of the 10 images"):
        module(root, val_size=5, test_size=0.5).setup("fit")
    with pytest.raises(DatasetError, match=r"val_size 0\.01 of 10 images is no image"):
        module(root, val_size=0.01).setup("fit")


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("channels", 5, "must be 1, 2, 3, 4 or auto"),
        ("image_size", [8], r"must be \[height, width\] of at least 8 pixels"),
        ("image_size", [6, 40], r"must be \[height, width\] of at least 8 pixels"),
        ("val_size", 0, "must be a fraction or a count, not 0"),
        ("test_size", -1, "must be a fraction or a count, not -1"),
        ("batch_size", 0, "must be at least 1"),
        ("num_workers", -1, "must be at least 0"),
    ],
    ids=lambda value: value if isinstance(value, str) and value.isidentifier() else "",
)
def test_out_of_range_arguments_are_refused(name: str, value: Any, message: str) -> None:
    with pytest.raises(DatasetError, match=f"--data.{name} {message}"):
        data.ImageDataModule(**{name: value})
