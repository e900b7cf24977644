"""The Lightning side of ``tune.py``: report each epoch's validation metric to the running
Optuna trial and stop the fit when the study's pruner says so.

Our own callback rather than optuna-integration's ``PyTorchLightningPruningCallback``: that
one imports ``lightning.pytorch`` (the unified ``lightning`` package), a second copy of
Lightning beside the ``pytorch_lightning`` this project uses, whose classes are not the same
classes; mixing the two is a known source of trouble. What it does fits in a few lines here.

It lives in its own module, not in ``tune.py``, because LightningCLI imports it by class path:
``python -m <package>.tune`` runs ``tune.py`` as ``__main__``, and a class defined there would
exist twice, with two separate ``trial`` slots.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from typing import ClassVar

import optuna
import pytorch_lightning as pl
from pytorch_lightning.utilities import rank_zero_info

from .errors import UserError


class PruneTrial(pl.Callback):
    """After each validation epoch, report ``metric`` to the trial (step = epoch) and raise
    ``optuna.TrialPruned`` if the pruner stops it; the trial then ends as PRUNED, untested.

    LightningCLI builds callbacks from the command line, which cannot carry a trial object:
    ``tune.py`` sets the trial for the duration of each run with ``reporting_to``. A process
    runs one trial at a time, and ``tune.py`` keeps each trial on one device.
    """

    _trial: ClassVar[optuna.Trial | None] = None

    def __init__(self, metric: str) -> None:
        self.metric = metric

    @classmethod
    @contextmanager
    def reporting_to(cls, trial: optuna.Trial) -> Iterator[None]:
        cls._trial = trial
        try:
            yield
        finally:
            cls._trial = None

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._trial is None:
            # E.g. a trial's saved config.yaml used again for a plain `train` run.
            rank_zero_info("PruneTrial: no Optuna trial is running, nothing to report")

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._trial is None or trainer.sanity_checking:
            return
        if self.metric not in trainer.callback_metrics:
            logged = ", ".join(sorted(trainer.callback_metrics)) or "nothing"
            raise UserError(
                f"the search's metric {self.metric} is not logged by the model (logged: {logged})"
            )
        value = float(trainer.callback_metrics[self.metric])
        epoch = trainer.current_epoch
        self._trial.report(value, step=epoch)
        if self._trial.should_prune():
            raise optuna.TrialPruned(f"pruned after epoch {epoch + 1}: {self.metric}={value:.4g}")
