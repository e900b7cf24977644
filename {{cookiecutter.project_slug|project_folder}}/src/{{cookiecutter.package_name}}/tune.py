r"""Hyperparameter search with Optuna; each trial is a normal ``train`` run of this project.

    python -m {{ cookiecutter.package_name }}.tune \
        --search configs/tune.yaml --config configs/default.yaml [train arguments]

``configs/tune.yaml`` holds the search space (config keys and their distributions), the
metric and its direction, the pruner and the number of trials. Every other argument goes to
each trial's ``train`` command, followed by the trial's values. The study lives in
``--storage``; running the same command again continues it until it has ``n_trials``
finished (complete or pruned) trials, and processes given the same storage share the work.
Results go to ``logs/tune/<study_name>/``: ``best.yaml`` (``train --config best.yaml``
retrains the best trial), ``trials.csv``, two plots and one run folder per trial.
"""

import argparse
import contextlib
import csv
import importlib
import io
import json
import os
import signal
import socket
import sys
import threading
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy
import yaml
from optuna.exceptions import ExperimentalWarning
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend, JournalStorage
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState
from pytorch_lightning.utilities.exceptions import SIGTERMException

from .errors import NonFiniteLossError, UserError
from .pruning import PruneTrial
from .train import train

RESULTS_ROOT = Path("logs", "tune")
DEFAULT_STORAGE = f"sqlite:///{RESULTS_ROOT / 'optuna.db'}"
DISTRIBUTIONS = {
    "float": optuna.distributions.FloatDistribution,
    "int": optuna.distributions.IntDistribution,
    "categorical": optuna.distributions.CategoricalDistribution,
}
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
# A trial killed twice is probably what kills its worker (e.g. out of memory): fail it then.
RETRIES_OF_A_KILLED_TRIAL = 1
# Set by SIGTERM or Ctrl-C in main(); see request_stop.
STOP_REQUESTED = threading.Event()


@dataclass
class Search:
    """The contents of the search file (configs/tune.yaml)."""

    path: Path
    study_name: str
    n_trials: int
    metric: str
    direction: str
    pruner: optuna.pruners.BasePruner
    sampler: optuna.samplers.BaseSampler | None
    heartbeat_interval: int | None
    # config key -> (distribution type, its arguments), e.g. ("float", {"low": ..., "high": ...})
    space: dict[str, tuple[str, dict[str, Any]]]


class SurplusTrial(Exception):
    """This trial would take the study past n_trials."""


def main(argv: list[str] | None = None) -> None:
    # SIGTERM (kill, scancel, a SLURM time limit) stops a search like Ctrl-C does: a trial in
    # progress is marked failed rather than left RUNNING, and a rerun continues the study.
    stops = (signal.SIGINT, signal.SIGTERM)
    previous = {signum: signal.signal(signum, request_stop) for signum in stops}
    try:
        tune(argv)
    except UserError as error:
        sys.exit(f"error: {error}")
    except KeyboardInterrupt:
        sys.exit("interrupted (a trial in progress is marked failed): rerun to continue the study")
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        STOP_REQUESTED.clear()


def request_stop(signum: int, frame: object) -> None:
    """Stop the search where it is, like Ctrl-C. Python ignores an exception raised inside a
    finalizer (e.g. while Optuna collects the garbage of a trial), so the request also stays
    in STOP_REQUESTED, which run_trials checks before each trial."""
    STOP_REQUESTED.set()
    raise KeyboardInterrupt


def tune(argv: list[str] | None = None) -> optuna.Study:
    """Check everything, run trials until the study has n_trials finished ones, and write the
    results. Every input is checked before the first trial starts."""
    options, train_args = parse_arguments(argv)
    with warnings.catch_warnings():
        # The check for stale trials and the plots are marked experimental in Optuna too.
        warnings.simplefilter("ignore", ExperimentalWarning)
        # Lightning warns when a CLI gets arguments while sys.argv has some: tune's own.
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
        search = load_search(Path(options.search))
        config = check_train_args(search, train_args)
        storage = open_storage(options.storage, search.heartbeat_interval)
        study = open_study(search, storage)
        results = RESULTS_ROOT / search.study_name
        results.mkdir(parents=True, exist_ok=True)
        run_trials(study, Objective(search, train_args, config, results), search.n_trials)
        write_results(study, search, results)
    return study


def parse_arguments(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(
        prog=f"python -m {__package__}.tune",
        description="Hyperparameter search with Optuna; each trial is a run of train.",
        epilog="Every other argument goes to each trial's train command (see its --help).",
        # Otherwise a train flag could be taken for an abbreviation of one of these.
        allow_abbrev=False,
    )
    parser.add_argument(
        "--search", default="configs/tune.yaml", help="The search file (default: %(default)s)."
    )
    parser.add_argument(
        "--storage",
        help="Where the study lives: an RDB URL (sqlite:///file.db, "
        "postgresql+psycopg://user@host/db) "
        "or the path of an Optuna journal file (e.g. on a file system shared by several "
        f"machines). Default: {DEFAULT_STORAGE}",
    )
    return parser.parse_known_args(argv)


def load_search(path: Path) -> Search:
    try:
        spec = yaml.safe_load(path.read_text())
    except OSError as error:
        raise UserError(f"cannot read the search file {path}: {error.strerror}") from error
    except yaml.YAMLError as error:
        raise UserError(f"{path} is not valid YAML: {one_line(error)}") from error
    fields = {
        "study_name": str,
        "n_trials": int,
        "metric": str,
        "direction": str,
        "pruner": dict,
        "sampler": dict,
        "heartbeat_interval": int,
        "search_space": dict,
    }
    if not isinstance(spec, dict):
        raise UserError(f"{path} should be a mapping with the fields {', '.join(fields)}")
    unknown = sorted(spec.keys() - fields.keys())
    if unknown:
        raise UserError(f"{path}: unknown field {unknown[0]} (fields: {', '.join(fields)})")
    for name, kind in fields.items():
        optional = name in ("sampler", "heartbeat_interval")
        if name not in spec and not optional:
            raise UserError(f"{path}: the field {name} is missing")
        if name in spec and not isinstance(spec[name], kind):
            raise UserError(f"{path}: {name} should be a {kind.__name__}, not {spec[name]!r}")
    if Path(spec["study_name"]).name != spec["study_name"]:
        raise UserError(f"{path}: study_name names a folder of logs/tune: no '/' or '..'")
    if spec["n_trials"] < 1:
        raise UserError(f"{path}: n_trials should be at least 1, not {spec['n_trials']}")
    if spec["direction"] not in ("maximize", "minimize"):
        raise UserError(f"{path}: direction is maximize or minimize, not {spec['direction']!r}")
    if spec.get("heartbeat_interval", 1) < 1:
        raise UserError(f"{path}: heartbeat_interval is a number of seconds, at least 1")
    if not spec["search_space"]:
        raise UserError(f"{path}: search_space is empty")
    return Search(
        path=path,
        study_name=spec["study_name"],
        n_trials=spec["n_trials"],
        metric=spec["metric"],
        direction=spec["direction"],
        pruner=instantiate(path, "pruner", spec["pruner"], optuna.pruners.BasePruner),
        sampler=instantiate(path, "sampler", spec["sampler"], optuna.samplers.BaseSampler)
        if "sampler" in spec
        else None,
        heartbeat_interval=spec.get("heartbeat_interval"),
        space={
            str(key): distribution(path, str(key), entry)
            for key, entry in spec["search_space"].items()
        },
    )


def instantiate(path: Path, name: str, spec: dict[str, Any], base: type) -> Any:
    """An Optuna pruner or sampler from ``{class_path: ..., init_args: {...}}``."""
    class_path = str(spec.get("class_path", ""))
    module, _, class_name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), class_name)
    except (ImportError, AttributeError, ValueError):
        cls = None
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise UserError(
            f"{path}: {name}.class_path should name a class of {base.__module__}, "
            f"not {class_path!r}"
        )
    try:
        return cls(**spec.get("init_args", {}))
    except (TypeError, ValueError) as error:
        raise UserError(f"{path}: {name}: {one_line(error)}") from error


def distribution(path: Path, key: str, entry: Any) -> tuple[str, dict[str, Any]]:
    """Check one entry of the search space by building its Optuna distribution."""
    if not isinstance(entry, dict) or entry.get("type") not in DISTRIBUTIONS:
        kinds = ", ".join(DISTRIBUTIONS)
        raise UserError(
            f"{path}: search_space {key} should be a mapping with a type ({kinds}) and its "
            "arguments, e.g. `model.lr: {type: float, low: 1.0e-4, high: 0.1, log: true}`"
        )
    kind = entry["type"]
    arguments = {name: value for name, value in entry.items() if name != "type"}
    try:
        DISTRIBUTIONS[kind](**arguments)
    except (TypeError, ValueError) as error:
        raise UserError(
            f"{path}: search_space {key} is not a valid {kind} distribution: {one_line(error)}"
        ) from error
    return kind, arguments


def check_train_args(search: Search, train_args: list[str]) -> dict[str, Any]:
    """Parse (without running) the trials' train command: every key of the search space must
    be a setting of the config and take every end of its range. Returns the resolved config."""
    config = yaml.safe_load(resolved_config(train_args))
    for key, (kind, arguments) in search.space.items():
        if not has_key(config, key):
            raise UserError(
                f"{search.path}: unknown config key {key} in search_space "
                f"(`python -m {__package__}.train --print_config` shows them)"
            )
        ends = (
            arguments["choices"] if kind == "categorical" else (arguments["low"], arguments["high"])
        )
        for value in ends:
            try:
                resolved_config([*train_args, *as_flags({key: value})])
            except UserError as error:
                raise UserError(f"{search.path}: search_space {key} = {value!r}: {error}") from None
    devices = config["trainer"]["devices"]
    if devices not in ("auto", 1, "1") and not (isinstance(devices, list) and len(devices) == 1):
        raise UserError(
            f"tune runs each trial on one device, not trainer.devices={devices}: run one tune "
            "process per GPU instead (CUDA_VISIBLE_DEVICES=<i>), all with the same --storage"
        )
    return config


def resolved_config(train_args: list[str]) -> str:
    """The complete config (YAML) that ``train`` would run with these arguments."""
    output, errors = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(output), contextlib.redirect_stderr(errors):
            train([*train_args, "--print_config"])
    except SystemExit as exit:
        if exit.code == 0:
            return output.getvalue()
        # jsonargparse prints the usage, then "error: " and the reason over a few lines.
        reason = " ".join(errors.getvalue().rpartition("error:")[2].split())
        raise UserError(f"train refuses its arguments: {reason}") from None
    raise AssertionError("train --print_config always exits")


def has_key(config: dict[str, Any], key: str) -> bool:
    """Whether a dotted key names a setting; like jsonargparse, ``model.net.width`` also finds
    ``model.net.init_args.width``."""
    node: Any = config
    for part in key.split("."):
        if isinstance(node, dict) and part not in node and isinstance(node.get("init_args"), dict):
            node = node["init_args"]
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def as_flags(values: dict[str, Any]) -> list[str]:
    """Command-line flags; jsonargparse reads a value as YAML (JSON is YAML) unless the
    setting is a string, so strings go as they are."""
    return [
        f"--{key}={value if isinstance(value, str) else json.dumps(value)}"
        for key, value in values.items()
    ]


def open_storage(
    location: str | None, heartbeat_interval: int | None
) -> optuna.storages.BaseStorage:
    if location is None:
        RESULTS_ROOT.mkdir(parents=True, exist_ok=True)
        location = DEFAULT_STORAGE
    try:
        if "://" not in location:
            # Heartbeats need an RDB storage: in a journal file (Optuna 5.0), a trial whose
            # worker dies without SIGTERM stays RUNNING until failed by hand (optuna-dashboard).
            return JournalStorage(JournalFileBackend(location))
        # Workers on one machine wait for SQLite's lock instead of failing after 5 s.
        engine = {"connect_args": {"timeout": 60}} if location.startswith("sqlite") else {}
        with warnings.catch_warnings():
            # Optuna marks heartbeats experimental; they are its documented way to find
            # trials whose worker died.
            warnings.simplefilter("ignore", ExperimentalWarning)
            return RDBStorage(
                location,
                engine_kwargs=engine,
                heartbeat_interval=heartbeat_interval,
                heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(
                    max_retry=RETRIES_OF_A_KILLED_TRIAL
                ),
            )
    except Exception as error:  # drivers fail in many ways: URL, server, module, permissions
        # Optuna turns a missing driver into an ImportError of its own; the cause names it.
        reason = one_line(error.__cause__ or error)
        raise UserError(f"cannot open the storage {redacted(location)}: {reason}") from error


def open_study(search: Search, storage: optuna.storages.BaseStorage) -> optuna.Study:
    """Create the study, or load it to continue; refuse one made for another objective."""
    study = optuna.create_study(
        study_name=search.study_name,
        storage=storage,
        direction=search.direction,
        pruner=search.pruner,
        sampler=search.sampler,
        load_if_exists=True,
    )
    existing = f"the study {search.study_name} in this storage"
    remedy = "give this search another study_name"
    if study.directions != [StudyDirection[search.direction.upper()]]:
        directions = " and ".join(direction.name.lower() for direction in study.directions)
        raise UserError(
            f"{existing} is to {directions}, {search.path} says {search.direction}: {remedy}"
        )
    metric = study.user_attrs.get("metric", search.metric)
    if metric != search.metric:
        raise UserError(
            f"{existing} is over {metric}, {search.path} says {search.metric}: {remedy}"
        )
    for trial in study.get_trials(deepcopy=False):
        for key, (kind, arguments) in search.space.items():
            if key in trial.distributions:
                try:
                    optuna.distributions.check_distribution_compatibility(
                        trial.distributions[key], DISTRIBUTIONS[kind](**arguments)
                    )
                except ValueError as error:
                    raise UserError(
                        f"{existing} searched {key} otherwise ({one_line(error)}): {remedy}"
                    ) from None
    study.set_user_attr("metric", search.metric)
    return study


def run_trials(study: optuna.Study, objective: "Objective", n_trials: int) -> None:
    """Run trials until the study, with the trials of other workers, has n_trials finished
    or running ones. Optuna does the rest: the storage numbers trials and hands out retries,
    and every trial starts by failing (and queueing a retry of) trials whose heartbeat
    stopped."""
    while True:
        if STOP_REQUESTED.is_set():
            raise KeyboardInterrupt
        optuna.storages.fail_stale_trials(study)
        states = Counter(trial.state for trial in study.get_trials(deepcopy=False))
        if sum(states[state] for state in (*FINISHED, TrialState.RUNNING)) >= n_trials:
            return
        # gc: a trial is a whole training run; its model and data go before the next one.
        study.optimize(objective, n_trials=1, catch=(SurplusTrial,), gc_after_trial=True)


class Objective:
    """One trial: the search space's values as flags after the user's train arguments, and
    the flags that make it a trial (its run folder, one device, the pruning callback)."""

    def __init__(
        self, search: Search, train_args: list[str], config: dict[str, Any], results: Path
    ) -> None:
        self.search = search
        self.results = results
        # A trial checkpoints, stops early and is tested on the metric it is scored by.
        mode = "max" if search.direction == "maximize" else "min"
        monitor = {
            "checkpoint.monitor": search.metric,
            "checkpoint.mode": mode,
            "early_stopping.monitor": search.metric,
            "early_stopping.mode": mode,
        }
        self.train_args = [*train_args, *as_flags(monitor)]
        pruning = {
            "class_path": f"{PruneTrial.__module__}.PruneTrial",
            "init_args": {"metric": search.metric},
        }
        self.run_flags = [f"--trainer.callbacks+={json.dumps(pruning)}"]
        if config["trainer"]["devices"] == "auto":
            self.run_flags += ["--trainer.devices=1"]
        # A logger given by class path (TensorBoard, CSV, W&B, MLflow) writes under save_dir.
        logger = config["trainer"]["logger"]
        self.logger_has_save_dir = isinstance(logger, dict) and "save_dir" in logger.get(
            "init_args", {}
        )

    def __call__(self, trial: optuna.Trial) -> float:
        if surplus(trial, self.search.n_trials):
            trial.set_user_attr("surplus", True)
            raise SurplusTrial(
                f"trial {trial.number} gives way: the study already has {self.search.n_trials} "
                "trials finished or running"
            )
        values = {
            key: getattr(trial, f"suggest_{kind}")(key, **arguments)
            for key, (kind, arguments) in self.search.space.items()
        }
        # What best.yaml reproduces: the user's arguments and this trial's values.
        train_args = [*self.train_args, *as_flags(values)]
        run_dir = self.results / f"trial_{trial.number:04d}"
        trial.set_user_attr("train_args", train_args)
        trial.set_user_attr("run_dir", str(run_dir))
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        # Each trial's logs and checkpoints under its own folder: the loggers' version counters
        # would race between workers sharing logs/.
        where = {"trainer.default_root_dir": str(run_dir)}
        if self.logger_has_save_dir:
            where["trainer.logger.init_args.save_dir"] = str(run_dir)
        with PruneTrial.reporting_to(trial):
            try:
                cli = train([*train_args, *as_flags(where), *self.run_flags])
            except NonFiniteLossError as error:
                # Pruned rather than failed: the sampler learns to avoid pruned regions, while
                # it ignores failed trials.
                raise optuna.TrialPruned(str(error)) from error
            except SystemExit as exit:
                # Lightning answers Ctrl-C (and SIGTERM, which main() turns into Ctrl-C) with
                # sys.exit(1), and a SIGTERM it caught itself with SIGTERMException. Optuna
                # marks a trial failed on an Exception or KeyboardInterrupt only, and would
                # leave this one RUNNING.
                if isinstance(exit, SIGTERMException) or isinstance(
                    exit.__context__, KeyboardInterrupt
                ):
                    raise KeyboardInterrupt from exit
                raise
        checkpoint = next(
            callback
            for callback in cli.trainer.checkpoint_callbacks
            if callback.monitor == self.search.metric
        )
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


def write_results(study: optuna.Study, search: Search, results: Path) -> None:
    """best.yaml, trials.csv and the plots, from every worker's trials. Each worker writes them
    when it stops, whole files only, so the last one leaves the complete results."""
    trials = study.get_trials(deepcopy=False)
    write_file(results / "trials.csv", trials_table(trials, search))
    finished = sum(trial.state in FINISHED for trial in trials)
    complete = [trial for trial in trials if trial.state == TrialState.COMPLETE]
    print(
        f"study {study.study_name}: {finished} of {search.n_trials} trials finished "
        f"({len(complete)} complete, {finished - len(complete)} pruned); results in {results}"
    )
    missing = search.n_trials - finished
    if missing > 0:
        running = sum(trial.state == TrialState.RUNNING for trial in trials)
        rerun = "" if running >= missing else "; rerun to run the rest"
        print(f"{missing} more to go: {running} running in other workers{rerun}")
    if not complete:
        return
    best = study.best_trial
    best_yaml = results / "best.yaml"
    write_file(
        best_yaml,
        f"# Trial {best.number} of the study {study.study_name}: "
        f"{search.metric} {best.value:.6g}\n"
        f"# Retrain: python -m {__package__}.train --config {best_yaml}\n"
        + resolved_config(best.user_attrs["train_args"]),
    )
    print(f"best: trial {best.number}, {search.metric} {best.value:.6g}; {best_yaml}")
    write_plots(study, results, compare_parameters=len(complete) >= 2)


def trials_table(trials: list[FrozenTrial], search: Search) -> str:
    tested = sorted(
        {name for trial in trials for name in trial.user_attrs if name.startswith("test/")}
    )
    columns = ["number", "state", search.metric, "epochs", "seconds", *search.space, *tested]
    table = io.StringIO()
    writer = csv.writer(table)
    writer.writerow([*columns, "worker", "run_dir"])
    for trial in trials:
        seconds = trial.duration.total_seconds() if trial.duration else None
        writer.writerow(
            [
                trial.number,
                trial.state.name,
                trial.value,
                len(trial.intermediate_values),
                None if seconds is None else round(seconds, 1),
                *(trial.params.get(key) for key in search.space),
                *(trial.user_attrs.get(name) for name in tested),
                trial.user_attrs.get("worker"),
                trial.user_attrs.get("run_dir"),
            ]
        )
    return table.getvalue()


def write_plots(study: optuna.Study, results: Path, compare_parameters: bool) -> None:
    """Optuna's plots of the optimization history and, given two complete trials or more to
    compare, of the parameters' importances."""
    # Imported here: pyplot takes a while to import and is only needed at the end.
    from matplotlib import pyplot as plt
    from optuna.visualization import matplotlib as plots

    charts = {"optimization_history.png": plots.plot_optimization_history}
    if compare_parameters:
        charts["param_importances.png"] = plots.plot_param_importances
    for name, plot in charts.items():
        figure = plot(study).figure
        figure.tight_layout()  # room for the parameters' long names
        partial = results / f"{name}.{os.getpid()}.partial"
        figure.savefig(partial, format="png", dpi=100)
        plt.close(figure)
        partial.replace(results / name)


def write_file(path: Path, text: str) -> None:
    """Replace a file whole, so that a reader never sees half of it."""
    partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
    partial.write_text(text)
    partial.replace(path)


def redacted(location: str) -> str:
    """A storage location without its password, for messages."""
    try:
        return sqlalchemy.engine.make_url(location).render_as_string(hide_password=True)
    except sqlalchemy.exc.ArgumentError:
        return location


def one_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


if __name__ == "__main__":
    main()
