"""Fine-tuning a pretrained backbone: its optimizer groups, and the epochs it stays frozen.

A network with a pretrained part (nets.Backbone) gives ``parameter_groups()``, each group with
its ``lr_ratio`` to the configured rate, and ``freeze_backbone(frozen)``; any other network is
one group at the configured rate, and nothing is frozen.
"""

from collections.abc import Callable
from functools import partial
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.strategies import DDPStrategy
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

# Schedulers that set every group's rate from their own arguments rather than the group's lr.
RATE_ARGUMENTS = ("max_lr", "base_lr")


def parameter_groups(net: nn.Module) -> list[dict[str, Any]]:
    """The optimizer's parameter groups for ``net``, each with its ``lr_ratio``."""
    if hasattr(net, "parameter_groups"):
        return net.parameter_groups()
    return [{"params": list(net.parameters()), "lr_ratio": 1.0}]


def scale_rates(
    optimizer: Optimizer, make_scheduler: Callable[..., LRScheduler] | None
) -> dict[str, list[float]]:
    """Scale each group's rate by its ``lr_ratio``, and return the arguments that scale the
    scheduler's own rates (OneCycleLR's max_lr, CyclicLR's) the same way, one per group."""
    ratios = [group["lr_ratio"] for group in optimizer.param_groups]
    for group, ratio in zip(optimizer.param_groups, ratios, strict=True):
        group["lr"] *= ratio
    # From a config, the factory is a partial of the class (jsonargparse's instantiation).
    keywords = make_scheduler.keywords if isinstance(make_scheduler, partial) else {}
    return {
        name: [keywords[name] * ratio for ratio in ratios]
        for name in RATE_ARGUMENTS
        if isinstance(keywords.get(name), int | float)
    }


class FreezeBackbone(pl.Callback):
    """Keeps the network's pretrained backbone frozen for the first ``freeze_epochs`` epochs,
    its BatchNorm layers in eval mode (their pretrained statistics kept), then trains it.

    Not Lightning's BackboneFinetuning: it adds the backbone to the optimizer as a new group
    when it unfreezes, which a schedule built at the start (OneCycleLR) has no rate for, and
    which changes the optimizer state's shape mid-run. Here the optimizer holds every group
    from the first step, frozen parameters get no gradient (so no update, no weight decay),
    and the phase follows from the epoch alone: a resumed fit is in the same phase.
    """

    def __init__(self, freeze_epochs: int = 1) -> None:
        """
        Args:
            freeze_epochs: Epochs at the start that train only the new classifier (0: none).
        """
        if freeze_epochs < 0:
            raise ValueError(f"freeze_epochs must be at least 0, not {freeze_epochs}")
        self.freeze_epochs = freeze_epochs

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # DDP wraps the network before the first epoch, every parameter requiring a gradient:
        # a frozen backbone then gives none, which DDP refuses unless told to look for unused
        # parameters. Frozen, they are left out of the step; unfrozen, they are synchronized
        # again. The strategy's DDP arguments are set here because DDPStrategy only takes them
        # when built, and `strategy: auto` builds it.
        frozen_phase = self.freeze_epochs and getattr(pl_module.net, "pretrained", False)
        if frozen_phase and isinstance(trainer.strategy, DDPStrategy):
            trainer.strategy._ddp_kwargs.setdefault("find_unused_parameters", True)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        net = pl_module.net
        if hasattr(net, "freeze_backbone"):
            net.freeze_backbone(trainer.current_epoch < self.freeze_epochs)
