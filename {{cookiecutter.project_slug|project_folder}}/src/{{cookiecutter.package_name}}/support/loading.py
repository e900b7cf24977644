"""Batches from decoded images: for data.py, and for a data module of your own to reuse.

``InMemoryImages`` keeps a data set as one uint8 tensor and hands the DataLoader whole batches
(one indexing operation per batch instead of collating images one by one); ``batch_loader``
makes the DataLoader for any split of it, one that a fit resumes mid-epoch for training.
"""

from collections.abc import Iterator
from typing import Any

import torch
from pytorch_lightning.overrides.distributed import UnrepeatedDistributedSampler
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, RandomSampler


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
    sampler = ResumableOrder(dataset) if shuffle else None
    if not shuffle and torch.distributed.is_available() and torch.distributed.is_initialized():
        sampler = UnrepeatedDistributedSampler(dataset, shuffle=False)
    batched = hasattr(dataset, "__getitems__")
    return (ResumableLoader if shuffle else DataLoader)(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        collate_fn=already_batched if batched else None,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        pin_memory=torch.cuda.is_available(),
    )


def already_batched(batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    """The collate function of datasets whose ``__getitems__`` returns whole batches."""
    return batch


class ResumableOrder(RandomSampler):
    """``RandomSampler``'s order (the same seed from torch's random numbers, the same
    permutation), keeping each pass's seed so that a resumed fit can finish that pass. Being a
    ``RandomSampler``, Lightning replaces it by its ``DistributedSampler`` under DDP."""

    seed: int | None = None  # of the current pass
    resume: tuple[int, int] | None = None  # the seed of the next pass, and the indices to skip

    def __iter__(self) -> Iterator[int]:
        seed, skip = self.resume or (int(torch.empty((), dtype=torch.int64).random_().item()), 0)
        self.resume, self.seed = None, seed
        order = torch.randperm(len(self.data_source), generator=torch.Generator().manual_seed(seed))
        yield from order[skip:].tolist()


class ResumableLoader(DataLoader):
    """The training loader, resumable mid-epoch: Lightning keeps the ``state_dict`` of
    loaders that have one in its checkpoints and hands it back on resume.

    The state is the pass's order (its seed), the batches given out so far, and torch's random
    number generators (CPU and CUDA), which draw the augmentation, dropout and the next
    epoch's order: a resumed fit skips the batches already trained on, without loading them,
    and goes on with the same batches and the same random numbers as an uninterrupted one.
    (Under DDP the order is Lightning's sampler's, and the skipped batches are loaded and
    dropped; every process then continues with the generators of process 0.) torchdata's
    ``StatefulDataLoader`` does the same for any loader but is another dependency.
    """

    given = 0
    pending: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        return {"seed": getattr(self.sampler, "seed", None), "batches": self.given, "rng": rng()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.pending = state

    def __iter__(self) -> Iterator[Any]:
        # A generator: it starts at the first batch, after Lightning has restored the state
        # and set the sampler's epoch, and draws its random numbers where DataLoader would.
        state, self.pending, self.given = self.pending, None, 0
        if state is None:
            yield from self._counted(super().__iter__())
            return
        skip = state["batches"] if state["batches"] < len(self) else 0
        if not skip:  # saved between passes (or before the first): start the next one
            set_rng(state["rng"])
        ordered = isinstance(self.sampler, ResumableOrder)
        if ordered and skip:  # the sampler skips: the skipped batches are not even loaded
            self.sampler.resume = (state["seed"], skip * self.batch_size)
        batches = super().__iter__()
        if skip:
            for _ in range(0 if ordered else skip):
                next(batches)
            set_rng(state["rng"])
        self.given = skip
        yield from self._counted(batches)

    def _counted(self, batches: Iterator[Any]) -> Iterator[Any]:
        for batch in batches:
            self.given += 1
            yield batch


def rng() -> dict[str, Any]:
    """The states of torch's random number generators (Python's and NumPy's are not used)."""
    states = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["cpu"])
    cuda = states.get("cuda", [])
    # Only onto as many GPUs as saved them: on others, the fit goes on with their own.
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
