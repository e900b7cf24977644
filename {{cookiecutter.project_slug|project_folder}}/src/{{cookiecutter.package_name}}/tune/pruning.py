"""Report each epoch's validation metric to the running Optuna trial, and stop the fit when
the study's pruner says so.

Our own callback rather than optuna-integration's ``PyTorchLightningPruningCallback``: that
one imports ``lightning.pytorch`` (the unified ``lightning`` package), a second copy of
Lightning beside the ``pytorch_lightning`` this project uses, whose classes are not the same
classes. What it does fits in a few lines here.
"""

import optuna
import pytorch_lightning as pl

from ..support.errors import UserError


class PruneTrial(pl.Callback):
    """After each validation epoch, report ``metric`` to ``trial`` (step = epoch) and raise
    ``optuna.TrialPruned`` if the pruner stops it; the trial then ends as PRUNED, untested."""

    def __init__(self, trial: optuna.Trial, metric: str) -> None:
        self.trial = trial
        self.metric = metric

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        if self.metric not in trainer.callback_metrics:
            logged = ", ".join(sorted(trainer.callback_metrics)) or "nothing"
            raise UserError(
                f"the search's metric {self.metric} is not logged by the model (logged: {logged})"
            )
        value = float(trainer.callback_metrics[self.metric])
        epoch = trainer.current_epoch
        self.trial.report(value, step=epoch)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned after epoch {epoch + 1}: {self.metric}={value:.4g}")
