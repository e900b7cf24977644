"""``python -m <package>.tune``: the search's command line (see ``__init__.py``)."""

import argparse
import signal
import sys
import warnings
from pathlib import Path

from ..support.errors import exit_in_one_line, require
from ..support.process import configure_process

RESULTS_ROOT = Path("logs", "tune")
DEFAULT_STORAGE = f"sqlite:///{RESULTS_ROOT / 'optuna.db'}"


def parse_arguments(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(
        prog=f"python -m {__package__}",
        description="Hyperparameter search with Optuna; each trial is a run of train.",
        epilog="Every other argument goes to train, making the config each trial starts from.",
        # Otherwise a train flag could be taken for an abbreviation of one of these.
        allow_abbrev=False,
    )
    parser.add_argument("--search", type=Path, help="the search file (default: the package's)")
    parser.add_argument(
        "--storage",
        default=DEFAULT_STORAGE,
        help="where the study lives: an RDB URL (sqlite:///file.db, postgresql+psycopg://user@host"
        "/db) or the path of an Optuna journal file, e.g. on a file system several machines "
        "share (default: %(default)s)",
    )
    return parser.parse_known_args(argv)


def request_stop(signum: int, frame: object) -> None:
    """Stop the search where it is, like Ctrl-C. Python ignores an exception raised inside a
    finalizer (e.g. while Optuna collects the garbage of a trial), so the request also stays
    in STOP_REQUESTED, which the search checks before each trial."""
    from .study import STOP_REQUESTED

    STOP_REQUESTED.set()
    raise KeyboardInterrupt


def tune(argv: list[str] | None = None) -> object:
    """Check everything, run trials until the study has n_trials finished ones, and write the
    results. Every input is checked before the first trial starts."""
    options, train_args = parse_arguments(argv)
    require("optuna", extra="tune", feature="the search")
    from optuna.exceptions import ExperimentalWarning
    from optuna.storages import RDBStorage

    from ..train import resolve
    from .results import write_results
    from .search import DEFAULT_SEARCH, load_search
    from .study import Objective, check_search, open_storage, open_study, quiet_trials, run_trials

    path = options.search or DEFAULT_SEARCH
    search = load_search(path)
    base = resolve(train_args).config
    with warnings.catch_warnings(), quiet_trials():
        # Heartbeats and the plots are marked experimental in Optuna.
        warnings.simplefilter("ignore", ExperimentalWarning)
        # Each trial's config goes to train as an object while tune's own arguments stand in
        # sys.argv; Lightning warns of that mix, which is meant here.
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
        check_search(search, path, base)
        if options.storage == DEFAULT_STORAGE:
            RESULTS_ROOT.mkdir(parents=True, exist_ok=True)
        storage = open_storage(options.storage, search.heartbeat_interval)
        study = open_study(search, path, storage)
        results = RESULTS_ROOT / search.study_name
        results.mkdir(parents=True, exist_ok=True)
        heartbeat = isinstance(storage, RDBStorage) and bool(search.heartbeat_interval)
        run_trials(study, Objective(search, base, results), search, heartbeat)
        write_results(study, search, base, results)
    return study


def main(argv: list[str] | None = None) -> None:
    # SIGTERM (kill, scancel, a SLURM time limit) stops a search like Ctrl-C does: a trial in
    # progress is marked failed rather than left RUNNING, and a rerun continues the study.
    stops = (signal.SIGINT, signal.SIGTERM)
    previous = {signum: signal.signal(signum, request_stop) for signum in stops}
    configure_process()
    try:
        with exit_in_one_line():
            tune(argv)
    except KeyboardInterrupt:
        raise SystemExit(
            "interrupted (a trial in progress is marked failed): rerun to continue the study"
        ) from None
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if "optuna" in sys.modules:
            from .study import STOP_REQUESTED

            STOP_REQUESTED.clear()


if __name__ == "__main__":
    main()
