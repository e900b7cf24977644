"""The study: where it is stored, the trials it runs, and how workers share it."""

import contextlib
import logging
import os
import socket
import threading
import time
import warnings
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy
import torch._dynamo
from jsonargparse import Namespace
from optuna.exceptions import ExperimentalWarning
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend, JournalStorage
from optuna.study import StudyDirection
from optuna.trial import TrialState
from pytorch_lightning.utilities.exceptions import SIGTERMException

from ..support.errors import ConfigError, NonFiniteLossError, UserError, one_line
from ..train import TrainCLI, train
from ..training.runs import place_logs
from .pruning import PruneTrial
from .search import Search, ends, suggest

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
# A trial killed twice is probably what kills its worker (e.g. out of memory): fail it then.
RETRIES_OF_A_KILLED_TRIAL = 1
# Set by SIGTERM or Ctrl-C (see __main__.py): no trial starts after it.
STOP_REQUESTED = threading.Event()


class SurplusTrial(Exception):
    """This trial would take the study past n_trials."""


def open_storage(location: str, heartbeat_interval: int | None) -> optuna.storages.BaseStorage:
    """An RDB storage for a URL (sqlite:///..., postgresql+psycopg://...), else a journal file."""
    try:
        if "://" not in location:
            # Heartbeats need an RDB storage: in a journal file (Optuna 5.0), a trial whose
            # worker dies without SIGTERM stays RUNNING until failed by hand (optuna-dashboard).
            return JournalStorage(JournalFileBackend(location))
        # Workers on one machine wait for SQLite's lock instead of failing after 5 s.
        engine = {"connect_args": {"timeout": 60}} if location.startswith("sqlite") else {}
        retry = RetryHeartbeatStaleTrialCallback(max_retry=RETRIES_OF_A_KILLED_TRIAL)
        for attempt in range(5):
            try:
                with warnings.catch_warnings():
                    # Optuna marks heartbeats experimental; they are its way to find dead workers.
                    warnings.simplefilter("ignore", ExperimentalWarning)
                    return RDBStorage(
                        location,
                        engine_kwargs=engine,
                        heartbeat_interval=heartbeat_interval,
                        heartbeat_stale_trial_callback=retry,
                    )
            except sqlalchemy.exc.IntegrityError:
                # Workers starting together race to create Optuna's tables: the loser retries.
                time.sleep(0.5 * (attempt + 1))
        raise ConfigError(f"cannot create Optuna's tables in {redacted(location)}")
    except Exception as error:  # drivers fail in many ways: URL, server, module, permissions
        # Optuna turns a missing driver into an ImportError of its own; the cause names it.
        reason = one_line(error.__cause__ or error)
        raise ConfigError(f"cannot open the storage {redacted(location)}: {reason}") from error


def redacted(location: str) -> str:
    """A storage location without its password, for messages."""
    try:
        return sqlalchemy.engine.make_url(location).render_as_string(hide_password=True)
    except sqlalchemy.exc.ArgumentError:
        return location


def open_study(search: Search, path: Path, storage: optuna.storages.BaseStorage) -> optuna.Study:
    """Create the study, or load it to continue; refuse one made for another objective."""
    study = optuna.create_study(
        study_name=search.study_name,
        storage=storage,
        direction=search.direction,
        pruner=search.pruner,
        sampler=search.sampler,
        load_if_exists=True,
    )
    existing, remedy = f"the study {search.study_name} in this storage", "change study_name"
    if study.directions != [StudyDirection[search.direction.upper()]]:
        directions = " and ".join(direction.name.lower() for direction in study.directions)
        raise ConfigError(
            f"{existing} is to {directions}, {path} says {search.direction}: {remedy}"
        )
    metric = study.user_attrs.get("metric", search.metric)
    if metric != search.metric:
        raise ConfigError(f"{existing} is over {metric}, {path} says {search.metric}: {remedy}")
    for trial in study.get_trials(deepcopy=False):
        for key, distribution in search.search_space.items():
            if key in trial.distributions:
                try:
                    optuna.distributions.check_distribution_compatibility(
                        trial.distributions[key], distribution
                    )
                except ValueError as error:
                    raise ConfigError(
                        f"{existing} searched {key} otherwise ({one_line(error)}): {remedy}"
                    ) from None
    study.set_user_attr("metric", search.metric)
    return study


def with_values(base: Namespace, values: dict[str, Any], search: Search) -> Namespace:
    """The config of a run with the search's values: it also checkpoints, stops early and
    tests its best checkpoint on the search's metric."""
    config = base.clone()
    for key, value in values.items():
        config[key] = value
    mode = "max" if search.direction == "maximize" else "min"
    for callback in (config.checkpoint, config.early_stopping):
        callback.monitor, callback.mode = search.metric, mode
    config.checkpoint.filename = None  # named after the search's metric (train.py)
    return config


def in_trial_folder(config: Namespace, run_dir: Path) -> Namespace:
    """Each trial's logs and checkpoints in a folder of its own: the loggers' version counters
    would race between workers sharing logs/, and no plain run's `--ckpt_path last` finds it."""
    config.trainer.default_root_dir = str(run_dir)
    place_logs(config.trainer, str(run_dir))
    if config.trainer.devices == "auto":
        config.trainer.devices = 1
    config.ckpt_path = None
    return config


def check_search(search: Search, path: Path, base: Namespace) -> None:
    """Build what training builds from every end of every range, before any trial runs: a
    value the search allows but training refuses stops the search here, in one line."""
    if base.trainer.devices not in ("auto", 1, "1") and not (
        isinstance(base.trainer.devices, list) and len(base.trainer.devices) == 1
    ):
        raise ConfigError(
            f"tune runs each trial on one device, not trainer.devices={base.trainer.devices}: "
            "run one tune process per GPU instead (CUDA_VISIBLE_DEVICES=<i>), all with the same "
            "--storage"
        )
    for key, distribution in search.search_space.items():
        if key not in base:
            raise ConfigError(
                f"{path}: unknown config key {key} in search_space (`python -m "
                f"{__package__.rpartition('.')[0]}.train --print_config` shows them)"
            )
        for value in ends(distribution):
            config = with_values(base, {key: value}, search)
            config.trainer.logger = False
            try:
                cli = TrainCLI(config)
                cli.model.optimization(total_steps=1)
                if key.startswith("data."):
                    cli.datamodule.setup("fit")
            except UserError as error:
                raise ConfigError(f"{path}: search_space {key} = {value!r}: {error}") from None


def run_trials(
    study: optuna.Study, objective: "Objective", search: Search, heartbeat: bool
) -> None:
    """Run trials until the study, with the trials of other workers, has n_trials finished.
    Optuna does the rest: the storage numbers trials and hands out retries, and every worker
    fails (and queues a retry of) trials whose heartbeat stopped (``heartbeat``: the storage
    keeps them)."""
    waiting_said = False
    while not STOP_REQUESTED.is_set():
        optuna.storages.fail_stale_trials(study)
        states = Counter(trial.state for trial in study.get_trials(deepcopy=False))
        finished, running = sum(states[state] for state in FINISHED), states[TrialState.RUNNING]
        if finished >= search.n_trials:
            return
        if finished + running < search.n_trials:
            # gc: a trial is a whole training run; its model and data go before the next one.
            study.optimize(objective, n_trials=1, catch=(SurplusTrial,), gc_after_trial=True)
            continue
        if not heartbeat:
            print(
                f"{running} trial(s) still running in other workers; a journal file keeps no "
                "heartbeat: if their workers died, mark their trials failed in optuna-dashboard "
                "and rerun"
            )
            return
        if not waiting_said:  # their end, or their retry here once their heartbeat stops
            print(
                f"waiting for {running} trial(s) running in other workers; one whose worker died "
                f"is retried here {2 * search.heartbeat_interval} s after its last heartbeat"
            )
            waiting_said = True
        time.sleep(min(search.heartbeat_interval, 5))
    raise KeyboardInterrupt


class Objective:
    """One trial: the search space's values in the base config, in a run folder of its own,
    with the trial handed to the pruning callback."""

    def __init__(self, search: Search, base: Namespace, results: Path) -> None:
        self.search = search
        self.base = base
        self.results = results

    def __call__(self, trial: optuna.Trial) -> float:
        if surplus(trial, self.search.n_trials):
            trial.set_user_attr("surplus", True)
            raise SurplusTrial(
                f"trial {trial.number} gives way: the study already has {self.search.n_trials} "
                "trials finished or running"
            )
        space = self.search.search_space
        values = {key: suggest(trial, key, distribution) for key, distribution in space.items()}
        run_dir = self.results / f"trial_{trial.number:04d}"
        trial.set_user_attr("run_dir", str(run_dir))
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        config = in_trial_folder(with_values(self.base, values, self.search), run_dir)
        # With --model.compile, each trial's network compiles afresh: earlier trials' graphs
        # would count against torch.compile's recompile limit, past which it runs uncompiled.
        torch._dynamo.reset()
        try:
            cli = train(config, callbacks=[PruneTrial(trial, self.search.metric)])
        except NonFiniteLossError as error:
            # Pruned rather than failed: the sampler learns to avoid pruned regions, while it
            # ignores failed trials.
            raise optuna.TrialPruned(str(error)) from error
        except SystemExit as exit:
            # Lightning answers Ctrl-C (and SIGTERM, which tune turns into Ctrl-C) with
            # sys.exit(1), and a SIGTERM it caught itself with SIGTERMException. Optuna marks a
            # trial failed on an Exception or KeyboardInterrupt only, and would leave this one
            # RUNNING.
            if isinstance(exit, SIGTERMException) or isinstance(
                exit.__context__, KeyboardInterrupt
            ):
                raise KeyboardInterrupt from exit
            raise
        checkpoint = cli.config_init["checkpoint"]
        if checkpoint.best_model_score is None:
            raise UserError(
                f"trial {trial.number} saved no checkpoint, so no best {self.search.metric}"
            )
        for name, value in cli.trainer.callback_metrics.items():
            if name.startswith("test/"):
                trial.set_user_attr(name, float(value))
        return float(checkpoint.best_model_score)


def surplus(trial: optuna.Trial, n_trials: int) -> bool:
    """Whether the trial would take the study past n_trials.

    Workers that ask for a trial at the same moment each get one. Storages number trials in
    the order they create them, so each worker can tell whether earlier trials already fill
    the study, and the later one gives way (it ends as FAIL, which does not count).
    """
    taken = (TrialState.WAITING, TrialState.RUNNING, *FINISHED)
    earlier = trial.study.get_trials(deepcopy=False, states=taken)
    return sum(other.number < trial.number for other in earlier) >= n_trials


class NoStopTracebacks(logging.Filter):
    """Leaves out what Optuna logs of a trial stopped by SIGTERM or Ctrl-C: a traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        stopped = record.exc_info and issubclass(record.exc_info[0], KeyboardInterrupt)
        return not (stopped or "failed with value None" in record.getMessage())


@contextlib.contextmanager
def quiet_trials() -> Iterator[None]:
    """Trials report through the search's own lines; Lightning's notices at every run and
    Optuna's traceback of a stopped trial would drown them."""
    lightning, handlers = (
        logging.getLogger("pytorch_lightning"),
        logging.getLogger("optuna").handlers,
    )
    level, quiet = lightning.level, NoStopTracebacks()
    lightning.setLevel(logging.WARNING)
    for handler in handlers:
        handler.addFilter(quiet)
    try:
        yield
    finally:
        lightning.setLevel(level)
        for handler in handlers:
            handler.removeFilter(quiet)
