"""Batches from decoded images: for data.py, and for a data module of your own to reuse.

``InMemoryImages`` keeps a data set as one uint8 tensor and hands the DataLoader whole batches
(one indexing operation per batch instead of collating images one by one); ``batch_loader``
makes the DataLoader for any split of it.
"""

import torch
from pytorch_lightning.overrides.distributed import UnrepeatedDistributedSampler
from torch import Tensor
from torch.utils.data import DataLoader, Dataset


class InMemoryImages(Dataset):
    """uint8 images (N, channels, height, width) and their int64 labels (N,)."""

    def __init__(self, images: Tensor, labels: Tensor) -> None:
        self.images = images
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return self.images[index], self.labels[index]

    def __getitems__(self, indices: list[int]) -> tuple[Tensor, Tensor]:
        return self.images[indices], self.labels[indices]


def batch_loader(
    dataset: Dataset, batch_size: int, shuffle: bool = False, num_workers: int = 0
) -> DataLoader:
    """A DataLoader over ``dataset``, shuffled for training.

    Datasets with ``__getitems__`` (such as ``InMemoryImages``) return whole batches, which
    pass through as they are. Under DDP an evaluation split (``shuffle=False``) gives each
    image to exactly one process: Lightning's own sampler would repeat some to even out the
    processes' shares, and the repeats would count twice in the test metrics.
    """
    sampler = None
    if not shuffle and torch.distributed.is_available() and torch.distributed.is_initialized():
        sampler = UnrepeatedDistributedSampler(dataset, shuffle=False)
    batched = hasattr(dataset, "__getitems__")
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        sampler=sampler,
        collate_fn=already_batched if batched else None,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        pin_memory=torch.cuda.is_available(),
    )


def already_batched(batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    """The collate function of datasets whose ``__getitems__`` returns whole batches."""
    return batch
