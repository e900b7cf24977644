"""The search over the config: trials are runs of train, weak ones are pruned, an interrupted
or killed search continues to exactly n_trials, workers share a study in every kind of
storage, and bad input stops the search in one line before any trial."""

import gc
import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
import pytorch_lightning as pl
import yaml
{% if cookiecutter.model == "backbone" -%}
from helpers import (
    QUICK_FIT,
    callbacks_flag,
    command,
    exit_message,
    free_port,
    pretrained_flags,
    read_rows,
    run,
)
{% else -%}
from helpers import QUICK_FIT, callbacks_flag, command, exit_message, free_port, read_rows, run
{% endif -%}
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from {{ cookiecutter.package_name }}.train import resolve, train
from {{ cookiecutter.package_name }}.tune.__main__ import main, tune
from {{ cookiecutter.package_name }}.tune.search import DEFAULT_SEARCH, load_search
from {{ cookiecutter.package_name }}.tune.study import check_search, open_storage, surplus

pytestmark = pytest.mark.slow

# Tiny trials: two epochs (QUICK_FIT) of a few batches of the sample.
TRIAL_FLAGS = [
    *QUICK_FIT,
    "--trainer.limit_train_batches=4",
    "--trainer.limit_val_batches=2",
    "--trainer.limit_test_batches=2",
]
LEARNING_RATE = {
    "class_path": "FloatDistribution",
    "init_args": {"low": 1.0e-6, "high": 1.0e-2, "log": True},
}
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
INTERRUPTED = "interrupted (a trial in progress is marked failed): rerun to continue the study"


class SignalInTrial(pl.Callback):
    """After the first training step of trial number ``trial`` (known by its run folder),
    send ``signum`` (e.g. "SIGTERM") to this process, as kill or a scheduler would."""

    def __init__(self, trial: int, signum: str) -> None:
        self.trial = trial
        self.signum = signal.Signals[signum]

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        in_trial = Path(trainer.default_root_dir).name == f"trial_{self.trial:04d}"
        if in_trial and trainer.global_step == 1:
            os.kill(os.getpid(), self.signum)


class SignalAfterTrial(pl.Callback):
    """At the end of trial number ``trial``, leave garbage whose finalizer sends SIGTERM to
    this process: the signal then arrives while Optuna collects the garbage of the trial."""

    def __init__(self, trial: int) -> None:
        self.trial = trial

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if Path(trainer.default_root_dir).name == f"trial_{self.trial:04d}":
            garbage = SignalWhenCollected()
            garbage.cycle = garbage  # only the garbage collector frees a reference cycle


class SignalWhenCollected:
    cycle: object

    def __del__(self) -> None:
        os.kill(os.getpid(), signal.SIGTERM)


class Rendezvous(pl.Callback):
    """Hold the first fit of each process until ``parties`` processes have one running, so
    that their trials surely overlap."""

    def __init__(self, folder: str, parties: int) -> None:
        self.folder = Path(folder)
        self.parties = parties

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        (self.folder / str(os.getpid())).touch()
        deadline = time.monotonic() + 60
        while len(list(self.folder.iterdir())) < self.parties and time.monotonic() < deadline:
            time.sleep(0.05)


def write_search(folder: Path, **fields: Any) -> Path:
    """A search file: the given fields over small defaults (2 trials, val/loss, no pruning)."""
    spec = {
        "study_name": "test",
        "n_trials": 2,
        "metric": "val/loss",
        "direction": "minimize",
        "pruner": {"class_path": "optuna.pruners.NopPruner"},
        "search_space": {"model.optimizer.init_args.lr": LEARNING_RATE},
        **fields,
    }
    path = folder / "search.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def tune_command(search: Path, data_flags: list[str], *extra: str) -> list[str]:
    return command("tune", f"--search={search}", *data_flags, *TRIAL_FLAGS, *extra)


def load_trials(storage: str) -> list[FrozenTrial]:
    study = optuna.load_study(study_name="test", storage=open_storage(storage, None))
    return study.get_trials()


def callback(name: str, **arguments: Any) -> str:
    return callbacks_flag({"class_path": f"test_tune.{name}", "init_args": arguments})


{% if cookiecutter.model == "backbone" -%}
def test_shipped_search_space_is_searchable_in_the_default_config(
    data_flags: list[str], tmp_path: Path
) -> None:
    search = load_search(DEFAULT_SEARCH)
    # Pretrained as configured, from a file of timm's test ResNet (no hub here).
    flags = [*data_flags, *pretrained_flags(tmp_path / "weights.pth")]
    check_search(search, DEFAULT_SEARCH, resolve(flags).config)
{% else -%}
def test_shipped_search_space_is_searchable_in_the_default_config(data_flags: list[str]) -> None:
    search = load_search(DEFAULT_SEARCH)
    check_search(search, DEFAULT_SEARCH, resolve(data_flags).config)
{%- endif %}
    assert search.direction == "maximize" and search.metric == "val/acc"


def test_weak_trial_is_pruned_best_yaml_retrains_the_best_and_no_trial_is_resumed_as_last(
    data_flags: list[str], workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plain_run = train([*data_flags, *QUICK_FIT, "--trainer.max_epochs=1"])
    plain_last = Path(plain_run.trainer.log_dir, "checkpoints", "last.ckpt")
    storage = f"sqlite:///{workdir / 'study.db'}"
    # The first trial learns; the second, with a learning rate 10,000 times smaller, cannot,
    # and an aggressive pruner stops it after its first epoch.
    study = optuna.create_study(study_name="test", storage=storage, direction="minimize")
    study.enqueue_trial({"model.optimizer.init_args.lr": 1.0e-2})
    study.enqueue_trial({"model.optimizer.init_args.lr": 1.0e-6})
    median = {"n_startup_trials": 1, "n_warmup_steps": 0}
    pruner = {"class_path": "optuna.pruners.MedianPruner", "init_args": median}
    flags = [*data_flags, *TRIAL_FLAGS, "--model.scheduler=null"]
    search = write_search(workdir, pruner=pruner)

    study = tune([f"--search={search}", f"--storage={storage}", *flags])

    good, weak = study.get_trials()
    assert (good.state, weak.state) == (TrialState.COMPLETE, TrialState.PRUNED)
    assert list(good.intermediate_values) == [0, 1] and list(weak.intermediate_values) == [0]
    assert weak.intermediate_values[0] > good.intermediate_values[0]
    assert good.value == min(good.intermediate_values.values())
    # Each trial is a run in its own folder; the pruned one stopped before testing.
    assert len(list(Path(weak.user_attrs["run_dir"]).rglob("config.yaml"))) == 1
    assert not list(Path(weak.user_attrs["run_dir"]).rglob("test_metrics.json"))
    [summary] = Path(good.user_attrs["run_dir"]).rglob("test_metrics.json")
    assert json.loads(summary.read_text())["test/acc"] == pytest.approx(good.user_attrs["test/acc"])

    results = workdir / "logs" / "tune" / "test"
    rows = read_rows(results / "trials.csv")
    assert [(row["number"], row["state"], row["epochs"]) for row in rows] == [
        ("0", "COMPLETE", "2"),
        ("1", "PRUNED", "1"),
    ]
    assert (results / "optimization_history.png").read_bytes()[:8] == PNG_SIGNATURE
    assert not (results / "param_importances.png").exists(), "one complete trial: no comparison"

    # The trials' last.ckpt files are newer, but `--ckpt_path last` takes the plain run's.
    capsys.readouterr()
    train([*data_flags, *QUICK_FIT, "--trainer.max_epochs=1", "--ckpt_path=last"])
    assert f"resuming from {plain_last}" in capsys.readouterr().out

    best = results / "best.yaml"
    assert (
        yaml.safe_load(best.read_text())["model"]["optimizer"]["init_args"]["lr"]
        == good.params["model.optimizer.init_args.lr"]
    )
    (workdir / "retrain").mkdir()
    os.chdir(workdir / "retrain")
    cli = train(["--config", str(best)])
    assert float(cli.config_init["checkpoint"].best_model_score) == pytest.approx(
        good.value, rel=1e-5
    )


def test_sigterm_stops_the_search_in_one_line_and_a_rerun_finishes_exactly_n_trials(
    data_flags: list[str], workdir: Path
) -> None:
    search = write_search(workdir, n_trials=2)
    arguments = [f"--search={search}", *data_flags, *TRIAL_FLAGS]
    # The default storage: SQLite under logs/.
    storage = f"sqlite:///{workdir / 'logs' / 'tune' / 'optuna.db'}"
    handlers = [signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)]

    # This process is the tune process. SIGTERM after the first trial, while Optuna collects
    # its garbage (automatic collection off, so that this is when): no second trial starts.
    gc.disable()
    try:
        assert (
            exit_message(main, [*arguments, callback("SignalAfterTrial", trial=0)]) == INTERRUPTED
        )
    finally:
        gc.enable()
    assert [trial.state for trial in load_trials(storage)] == [TrialState.COMPLETE]

    # SIGTERM while the next trial trains: that trial is marked failed.
    stopped = exit_message(main, [*arguments, callback("SignalInTrial", trial=1, signum="SIGTERM")])
    assert stopped == INTERRUPTED
    assert [trial.state for trial in load_trials(storage)] == [TrialState.COMPLETE, TrialState.FAIL]
    assert [signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)] == handlers

    tune(arguments)

    # The interrupted trial stays failed; one more makes two finished.
    states = [trial.state for trial in load_trials(storage)]
    assert states == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE]


def test_a_worker_stopped_by_sigterm_says_one_line(
    data_flags: list[str], tmp_path: Path, child_env: dict[str, str]
) -> None:
    search = write_search(tmp_path, n_trials=1)
    stopped = run(
        tune_command(search, data_flags, callback("SignalInTrial", trial=0, signum="SIGTERM")),
        tmp_path,
        child_env,
    )
    assert stopped.returncode == 1
    assert "Traceback" not in stopped.stderr + stopped.stdout, stopped.stderr[-3000:]
    assert stopped.stderr.strip().splitlines()[-1] == INTERRUPTED


def test_a_killed_workers_trial_is_taken_over_by_an_immediate_rerun(
    data_flags: list[str],
    tmp_path: Path,
    child_env: dict[str, str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    heartbeat = 1
    search = write_search(tmp_path, n_trials=1, heartbeat_interval=heartbeat)
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    killed_worker = run(
        tune_command(
            search,
            data_flags,
            f"--storage={storage}",
            callback("SignalInTrial", trial=0, signum="SIGKILL"),
        ),
        tmp_path,
        child_env,
        timeout=120,
    )
    assert killed_worker.returncode == -signal.SIGKILL
    [killed] = load_trials(storage)
    assert killed.state == TrialState.RUNNING, "nothing could mark it: the process was killed"

    os.chdir(tmp_path)  # at once: the rerun waits until the heartbeat says the worker is dead
    tune([f"--search={search}", f"--storage={storage}", *data_flags, *TRIAL_FLAGS])

    trials = load_trials(storage)
    assert trials[0].state == TrialState.FAIL
    [retry] = [t for t in trials if RetryHeartbeatStaleTrialCallback.retried_trial_number(t) == 0]
    assert retry.state == TrialState.COMPLETE and retry.params == killed.params
    assert [trial.state for trial in trials] == [TrialState.FAIL, TrialState.COMPLETE]
    assert "waiting for 1 trial(s) running in other workers" in capsys.readouterr().out


@pytest.fixture(scope="session")
def postgresql_url() -> Iterator[str]:
    """A throw-away PostgreSQL server on loopback, where its binaries are installed."""
    found = shutil.which("pg_ctl")
    folders = [Path(found).parent] if found else []
    folders += sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
    folders = [folder for folder in folders if (folder / "initdb").is_file()]
    if not folders:
        pytest.skip("no PostgreSQL server here (initdb and pg_ctl not found)")
    pytest.importorskip("psycopg", reason='the driver is missing: pip install "psycopg[binary]"')
    # PostgreSQL refuses to run as root: as root, run it as the postgres user, in a folder it
    # owns outside pytest's private temporary folders.
    as_server: list[str] = []
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root without a postgres user to run the server")
        as_server = ["runuser", "-u", "postgres", "--"]
    folder = Path(tempfile.mkdtemp(prefix="tune-postgresql-"))
    data = folder / "data"
    pg_ctl = [*as_server, str(folders[0] / "pg_ctl"), "-D", str(data)]
    try:
        if as_server:
            shutil.chown(folder, "postgres")
        initdb = [*as_server, str(folders[0] / "initdb"), "-D", str(data), "-A", "trust"]
        subprocess.run([*initdb, "-U", "postgres"], check=True, capture_output=True)
        port = free_port()
        options = f"-k {folder} -p {port} -h 127.0.0.1"
        start = [*pg_ctl, "-o", options, "-l", str(folder / "server.log"), "-w", "start"]
        subprocess.run(start, check=True, capture_output=True)
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*pg_ctl, "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.parametrize("kind", ["journal", "sqlite", "postgresql"])
def test_two_workers_share_one_study(
    kind: str,
    data_flags: list[str],
    workdir: Path,
    child_env: dict[str, str],
    request: pytest.FixtureRequest,
) -> None:
    storage = {
        "journal": lambda: str(workdir / "journal.log"),
        "sqlite": lambda: f"sqlite:///{workdir / 'study.db'}",
        "postgresql": lambda: request.getfixturevalue("postgresql_url"),
    }[kind]()
    search = write_search(workdir, n_trials=2, study_name=f"test-{os.getpid()}-{kind}")
    (workdir / "rendezvous").mkdir()
    flags = [
        f"--storage={storage}",
        "--trainer.max_epochs=1",
        callback("Rendezvous", folder="rendezvous", parties=2),
    ]
    # One worker in a process of its own, the other in this one; they meet in their first trial.
    other = subprocess.Popen(
        tune_command(search, data_flags, *flags),
        cwd=workdir,
        env=child_env,
        stdout=subprocess.DEVNULL,
    )
    study = tune([f"--search={search}", *data_flags, *TRIAL_FLAGS, *flags])
    assert other.wait(timeout=300) == 0

    trials = study.get_trials()
    finished = [trial for trial in trials if trial.state in FINISHED]
    assert len(finished) == 2
    # The storage numbers trials: no number twice, none skipped. Trials beyond n_trials
    # (two workers asking at the same moment) gave way before training.
    assert sorted(trial.number for trial in trials) == list(range(len(trials)))
    assert all(trial.user_attrs.get("surplus") for trial in trials if trial not in finished)
    assert len({trial.user_attrs["worker"] for trial in finished}) == 2
    first, second = sorted(finished, key=lambda trial: trial.datetime_start)[:2]
    assert second.datetime_start < first.datetime_complete, "the workers took turns"
    for trial in finished:
        assert len(list(Path(trial.user_attrs["run_dir"]).rglob("test_metrics.json"))) == 1
    results = workdir / "logs" / "tune" / study.study_name
    for plot in ("optimization_history.png", "param_importances.png"):
        assert (results / plot).read_bytes()[:8] == PNG_SIGNATURE
    assert (results / "best.yaml").is_file()


def test_trial_beyond_n_trials_gives_way() -> None:
    # Two workers asked for the last of 2 trials at once; a third worker's trial failed.
    study = optuna.create_study()
    first, second, third, failed = (study.ask() for _ in range(4))
    study.tell(first, 0.5)
    study.tell(failed, state=TrialState.FAIL)
    assert not surplus(second, n_trials=2)
    assert surplus(third, n_trials=2)
    assert not surplus(study.ask(), n_trials=4), "failed trials leave their place"


def distribution(kind: str, **arguments: Any) -> dict[str, Any]:
    return {"class_path": kind, "init_args": arguments}


@pytest.mark.parametrize(
    ("fields", "extra", "message"),
    [
        ({"search_space": {"model.nope": LEARNING_RATE}}, [], "unknown config key model.nope"),
        ({"n_trials": 0}, [], 'key "n_trials": Not of type PositiveInt'),
        (
            {
                "search_space": {
                    "model.optimizer.init_args.lr": distribution(
                        "FloatDistribution", low=0.1, high=0.01
                    )
                }
            },
            [],
            "`low <= high` must hold",
        ),
        (
            {
                "search_space": {
                    "data.batch_size": distribution("CategoricalDistribution", choices=[8, 0])
                }
            },
            [],
            "search_space data.batch_size = 0: --data.batch_size must be at least 1",
        ),
        (
            {
                "search_space": {
{%- if cookiecutter.model == "backbone" %}
                    "model.net.init_args.backbone_lr_ratio": distribution(
                        "FloatDistribution", low=0.5, high=1.5
                    )
                }
            },
            [],
            "search_space model.net.init_args.backbone_lr_ratio = 1.5: --model.net cannot be built",
{%- else %}
                    "model.net.init_args.dropout": distribution(
                        "FloatDistribution", low=0.0, high=1.5
                    )
                }
            },
            [],
            "search_space model.net.init_args.dropout = 1.5: --model.net cannot be built",
{%- endif %}
        ),
        ({}, ["--trainer.max_epochs=abc"], "max_epochs"),
        ({}, ["--trainer.devices=2"], "tune runs each trial on one device"),
        ({}, ["--storage=sqlite:///missing/study.db"], "cannot open the storage"),
        ({}, ["--storage=missing/journal.log"], "cannot open the storage"),
        ({"direction": "maximize"}, [], "the study test in this storage is to minimize"),
    ],
    ids=[
        "unknown-key",
        "no-trials",
        "invalid-distribution",
        "refused-by-the-data-module",
        "refused-by-the-network",
        "refused-train-flag",
        "several-devices",
        "unopenable-sqlite",
        "unopenable-journal",
        "another-direction",
    ],
)
def test_bad_input_is_one_line_and_starts_no_trial(
    fields: dict[str, Any], extra: list[str], message: str, data_flags: list[str], workdir: Path
) -> None:
    storage = f"sqlite:///{workdir / 'study.db'}"
    optuna.create_study(study_name="test", storage=storage, direction="minimize")
    search = write_search(workdir, **fields)
    argv = [f"--search={search}", f"--storage={storage}", *data_flags, *TRIAL_FLAGS, *extra]
    stopped = exit_message(main, argv)
    assert stopped.startswith("error: ") and message in stopped
    assert load_trials(storage) == [] and not (workdir / "logs").exists()


def test_missing_extra_is_named_in_one_line(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "optuna", None)  # as without the tune extra
    assert exit_message(main, [f"--storage=sqlite:///{workdir / 'study.db'}"]) == (
        'error: the search needs optuna, which is not installed: pip install -e ".[tune]"'
    )
    assert not (workdir / "study.db").exists() and not (workdir / "logs").exists()
