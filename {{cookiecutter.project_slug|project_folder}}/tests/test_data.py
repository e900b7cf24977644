import shutil
from pathlib import Path

import pytest
import torch
from torchvision.io import write_png

from {{ cookiecutter.package_name }}.data import DATASET, RAW_FILES, DatasetError, ImageDataModule, raw_folder


def test_fit_split_is_seeded_disjoint_and_uint8(mnist_dir: Path) -> None:
    datamodule = ImageDataModule(data_dir=str(mnist_dir), val_size=128)
    datamodule.setup("fit")
    train, val = datamodule.datasets["train"], datamodule.datasets["val"]
    assert (len(train), len(val)) == (512, 128)
    assert train.images.dtype == torch.uint8
    assert train.images.shape[1:] == (1, 28, 28)

    again = ImageDataModule(data_dir=str(mnist_dir), val_size=128)
    again.setup("fit")
    assert torch.equal(again.datasets["val"].images, val.images)
    other_seed = ImageDataModule(data_dir=str(mnist_dir), val_size=128, split_seed=1)
    other_seed.setup("fit")
    assert not torch.equal(other_seed.datasets["val"].images, val.images)

    val_rows = {row.numpy().tobytes() for row in val.images}
    assert not any(row.numpy().tobytes() in val_rows for row in train.images)


def test_test_split_is_the_official_test_file(mnist_dir: Path) -> None:
    datamodule = ImageDataModule(data_dir=str(mnist_dir))
    datamodule.setup("test")
    assert len(datamodule.datasets["test"]) == 128


def test_batches_are_normalized_after_transfer(mnist_dir: Path) -> None:
    datamodule = ImageDataModule(data_dir=str(mnist_dir), val_size=128, batch_size=32)
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    images, labels = datamodule.on_after_batch_transfer(batch, 0)
    assert images.dtype == torch.float32 and images.shape == (32, 1, 28, 28)
    assert labels.dtype == torch.int64
    assert images.min() < 0 < images.max()


def test_missing_data_names_the_folder_and_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_network(self: DATASET) -> None:
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz")

    monkeypatch.setattr(DATASET, "download", no_network)
    with pytest.raises(DatasetError) as error:
        ImageDataModule(data_dir=str(tmp_path)).prepare_data()
    assert str(raw_folder(tmp_path)) in str(error.value)
    assert all(name in str(error.value) for name in RAW_FILES)


def test_truncated_file_is_named(mnist_dir: Path, tmp_path: Path) -> None:
    shutil.copytree(raw_folder(mnist_dir), raw_folder(tmp_path))
    truncated = raw_folder(tmp_path) / "train-images-idx3-ubyte"
    truncated.write_bytes(truncated.read_bytes()[:1000])
    with pytest.raises(DatasetError, match="train-images-idx3-ubyte is truncated or corrupt"):
        ImageDataModule(data_dir=str(tmp_path)).setup("fit")


def test_predict_images_are_grayscale_28x28_in_file_order(tmp_path: Path) -> None:
    write_png(torch.zeros(1, 28, 28, dtype=torch.uint8), str(tmp_path / "b.png"))
    write_png(torch.full((3, 56, 40), 200, dtype=torch.uint8), str(tmp_path / "a.png"))
    (tmp_path / "notes.txt").write_text("not an image")
    datamodule = ImageDataModule(predict_path=str(tmp_path))
    datamodule.setup("predict")
    dataset = datamodule.datasets["predict"]
    assert dataset.targets == [str(tmp_path / "a.png"), str(tmp_path / "b.png")]
    assert dataset.images.shape == (2, 1, 28, 28)
    assert dataset.images[0].float().mean() == pytest.approx(200, abs=2)


def test_predict_refuses_empty_folder_and_unreadable_image(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="holds no PNG or JPG images"):
        ImageDataModule(predict_path=str(tmp_path)).setup("predict")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DatasetError, match=r"cannot read image .*broken\.png"):
        ImageDataModule(predict_path=str(tmp_path)).setup("predict")
