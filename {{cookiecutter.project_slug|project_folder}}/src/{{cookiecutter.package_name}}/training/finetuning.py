"""Fine-tuning a pretrained backbone: the epochs it stays frozen.

A network with a pretrained part (nets.Backbone) gives ``freeze_backbone(frozen)``; any other
network is never frozen. Its optimizer groups and their rates are the model's
(model.parameter_groups).
"""

import pytorch_lightning as pl
from pytorch_lightning.strategies import DDPStrategy


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
