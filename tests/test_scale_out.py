"""Beyond one machine, on the real engines: the bake's own sbatch scripts on a throw-away
one-node Slurm cluster, and torchrun with two "nodes" on loopback (there is no second
machine: nodes are processes here; GPUs and real networks are not measured)."""

import csv
import json
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import bakes
import pytest
import yaml
from bakes import EVERY_OPTION, Bake, package_of, run_in, write_sample
from slurm_cluster import SlurmCluster, free_ports

pytestmark = pytest.mark.slow

# A short fit of the sample on the CPU, one thread per process as Lightning's own launcher
# sets it (and the sbatch scripts, from --cpus-per-task=1).
FIT = ["--trainer.accelerator=cpu", "--trainer.enable_progress_bar=false"]
# What the tests set in the users' scripts: this machine's resources, nothing else.
RESOURCES = {"nodes": "1", "ntasks-per-node": "2", "cpus-per-task": "1", "time": "00:10:00"}
# Lightning's warning when its own sampler repeats test images across processes.
REPEATS = "DistributedSampler` with the dataloaders. During `trainer.test()`"


@pytest.fixture(scope="module")
def project(bake: Bake) -> Path:
    return bake(**EVERY_OPTION)


@pytest.fixture(scope="module")
def data_flags(project: Path, tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    return bakes.data_flags(write_sample(project, tmp_path_factory.mktemp("data")))


@pytest.fixture(scope="module")
def env(project: Path) -> dict[str, str]:
    """For the jobs too (sbatch hands its environment on): this Python first on the PATH,
    the bake's package importable."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    return {"PATH": path, "PYTHONPATH": str(project / "src")}


@pytest.fixture(scope="module")
def launcher_run(
    project: Path,
    data_flags: list[str],
    env: dict[str, str],
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, Any]:
    """The same fit by Lightning's own launcher: two CPU processes, the reference."""
    run_dir = tmp_path_factory.mktemp("launcher")
    train = [
        "-m",
        f"{package_of(project)}.train",
        *data_flags,
        *FIT,
        "--trainer.devices=2",
        "--trainer.strategy=ddp",
    ]
    completed = run_in(project, *train, f"--trainer.default_root_dir={run_dir}", env=env)
    assert REPEATS not in completed.stderr
    [summary] = run_dir.rglob("test_metrics.json")
    return json.loads(summary.read_text())


def metrics_of(summary: dict[str, Any]) -> dict[str, float]:
    return {name: value for name, value in summary.items() if name.startswith("test/")}


def with_resources(script: Path, folder: Path, **changes: str) -> Path:
    """A copy of a user's sbatch script with its #SBATCH resource lines set for this machine:
    RESOURCES and ``changes`` replace theirs, and GPUs are not asked for."""
    wanted = {**RESOURCES, **changes}
    lines = []
    for line in script.read_text().splitlines():
        match = re.match(r"#SBATCH --([\w-]+)=", line)
        if match and match[1] == "gres":
            continue
        if match and match[1] in wanted:
            line = f"#SBATCH --{match[1]}={wanted.pop(match[1])}"
        lines.append(line)
    lines[1:1] = [f"#SBATCH --{name}={value}" for name, value in wanted.items()]
    copy = folder / script.name
    copy.write_text("\n".join(lines) + "\n")
    return copy


def job_output(project: Path, job: str) -> str:
    return "\n".join(path.read_text() for path in project.glob(f"slurm-{job}*.out"))


def test_sbatch_runs_the_users_script_as_lightnings_launcher_does(
    slurm_cluster: SlurmCluster,
    project: Path,
    data_flags: list[str],
    env: dict[str, str],
    launcher_run: dict,
    tmp_path: Path,
) -> None:
    print(slurm_cluster.run("sinfo", "-N", "-o", "%N %T %c %m", timeout=10).strip())
    script = with_resources(project / "scripts" / "slurm.sbatch", tmp_path)
    job = slurm_cluster.submit([str(script), *data_flags, *FIT], project, env)
    assert slurm_cluster.wait(job, timeout=120) == ["COMPLETED"], job_output(project, job)
    info = slurm_cluster.info(job)
    print(f"job {job}: JobState={info['JobState']} ExitCode={info['ExitCode']}")
    [summary] = (project / "logs" / f"slurm-{job}").rglob("test_metrics.json")
    slurm_run = json.loads(summary.read_text())
    print("sbatch:  ", metrics_of(slurm_run), "\nlauncher:", metrics_of(launcher_run))
    assert metrics_of(slurm_run) == metrics_of(launcher_run)
    assert REPEATS not in job_output(project, job), "the test repeated images across processes"

    # Predict under DDP from a job: one CSV, in input order, as one process writes it.
    best, csv_file = project / slurm_run["best_checkpoint"], tmp_path / "ddp.csv"
    predict = (
        f"srun python -m {package_of(project)}.inference.predict --ckpt_path {best} "
        f"--devices 2 --accelerator cpu --output {csv_file}"
    )
    job = slurm_cluster.submit(
        ["--nodes=1", "--ntasks-per-node=2", "--cpus-per-task=1", "--wrap", predict], tmp_path, env
    )
    assert slurm_cluster.wait(job, timeout=120) == ["COMPLETED"], job_output(tmp_path, job)
    single = tmp_path / "single.csv"
    run_in(
        project,
        "-m",
        f"{package_of(project)}.inference.predict",
        f"--ckpt_path={best}",
        f"--output={single}",
        "--accelerator=cpu",
        env=env,
    )
    with csv_file.open(newline="") as ddp, single.open(newline="") as one:
        ddp_rows, one_rows = list(csv.DictReader(ddp)), list(csv.DictReader(one))
    assert [row["source"] for row in ddp_rows] == [
        f"test/{index}" for index in range(len(one_rows))
    ]
    assert ddp_rows == one_rows


def test_a_preempted_job_is_requeued_and_finishes_the_run(
    slurm_cluster: SlurmCluster,
    project: Path,
    data_flags: list[str],
    env: dict[str, str],
    tmp_path: Path,
) -> None:
    epochs = 6
    script = with_resources(project / "scripts" / "slurm.sbatch", tmp_path)
    # Lightning saves its requeue checkpoint inside the signal handler, so a signal that finds
    # one process inside a collective and the other outside can hang them (Lightning issue
    # 21406): the signal is sent while both pause after a batch of the second epoch.
    pause = {"epoch": 1, "batch": 3, "seconds": 5}
    callbacks = [{"class_path": "pause_once.PauseOnce", "init_args": pause}]
    flags = [f"--trainer.max_epochs={epochs}", "--early_stopping.patience=100"]
    flags.append(f"--trainer.callbacks+={json.dumps(callbacks)}")
    job_env = {**env, "PYTHONPATH": f"{env['PYTHONPATH']}{os.pathsep}{Path(__file__).parent}"}
    job = slurm_cluster.submit([str(script), *data_flags, *FIT, *flags], project, job_env)
    deadline = time.monotonic() + 120
    while job_output(project, job).count("paused") < 2:
        assert time.monotonic() < deadline and slurm_cluster.state(job) in ("PENDING", "RUNNING"), (
            job_output(project, job)
        )
        time.sleep(0.1)
    slurm_cluster.run("scancel", "--signal=USR1", job)
    slurm_cluster.start_now(job)  # rather than after the requeued job's begin-time delay
    assert slurm_cluster.wait(job, timeout=180) == ["COMPLETED"], job_output(project, job)
    output, info = job_output(project, job), slurm_cluster.info(job)
    print(f"job {job}: JobState={info['JobState']} Restarts={info['Restarts']}")
    print(
        "\n".join(
            line
            for line in output.splitlines()
            if re.search(r"auto-requeue|[Rr]equeu|Restoring states|hpc_ckpt|^epoch", line)
        )
    )
    assert info["Restarts"] == "1" and f"Requeued SLURM job: {job}" in output
    run = project / "logs" / f"slurm-{job}"
    assert (
        f"Restoring states from the checkpoint path at logs/slurm-{job}/hpc_ckpt_1.ckpt" in output
    )
    # As many optimizer steps as an uninterrupted run: epochs x batches of each process.
    steps_per_epoch = -(-256 // 32)  # 512 training images of the sample, two processes
    lasts = sorted(run.rglob("last.ckpt"), key=os.path.getmtime)
    final = run_in(project, "-c", LAST_STATE, str(lasts[-1]), env=env)
    global_step, best = final.stdout.split()
    print(f"optimizer steps {global_step} of {epochs} x {steps_per_epoch}; best {best}")
    assert int(global_step) == epochs * steps_per_epoch
    [summary] = run.rglob("test_metrics.json")
    assert json.loads(summary.read_text())["best_checkpoint"] == best, (
        "not the best of the whole run"
    )


# The last checkpoint's step and the best checkpoint of the whole run, as it recorded them.
LAST_STATE = """
import sys, torch
checkpoint = torch.load(sys.argv[1], weights_only=True)
[best] = [state for name, state in checkpoint["callbacks"].items() if name.startswith("BestC")]
print(checkpoint["global_step"], best["best_model_path"])
"""


@pytest.fixture(scope="module")
def postgresql_url() -> Iterator[str]:
    """A throw-away PostgreSQL server on loopback (as the bake's search tests start one)."""
    folders = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
    if shutil.which("pg_ctl"):
        folders.insert(0, Path(shutil.which("pg_ctl")).parent)
    folders = [folder for folder in folders if (folder / "initdb").is_file()]
    if not folders:
        pytest.skip("no PostgreSQL server here (initdb and pg_ctl not found)")
    pytest.importorskip("psycopg", reason='the driver is missing: pip install "psycopg[binary]"')
    as_server = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if as_server:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root without a postgres user to run the server")
    folder = Path(tempfile.mkdtemp(prefix="scale-out-postgresql-"))
    data, pg_ctl = folder / "data", [*as_server, str(folders[0] / "pg_ctl")]
    try:
        if as_server:
            shutil.chown(folder, "postgres")
        subprocess.run(
            [
                *as_server,
                str(folders[0] / "initdb"),
                "-D",
                str(data),
                "-A",
                "trust",
                "-U",
                "postgres",
            ],
            check=True,
            capture_output=True,
        )
        [port] = free_ports(1)
        options = f"-k {folder} -p {port} -h 127.0.0.1"
        subprocess.run(
            [*pg_ctl, "-D", str(data), "-o", options, "-l", str(folder / "log"), "-w", "start"],
            check=True,
            capture_output=True,
        )
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*pg_ctl, "-D", str(data), "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.parametrize("storage", ["journal", "postgresql"])
def test_tune_sbatch_array_shares_one_study(
    storage: str,
    slurm_cluster: SlurmCluster,
    project: Path,
    data_flags: list[str],
    env: dict[str, str],
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    n_trials, study_name = 3, f"array-{storage}"
    search = yaml.safe_load(
        (project / "src" / package_of(project) / "configs" / "search.yaml").read_text()
    )
    search |= {
        "study_name": study_name,
        "n_trials": n_trials,
        "pruner": {"class_path": "optuna.pruners.NopPruner"},
    }
    search["search_space"] = {
        "model.optimizer.init_args.lr": {
            "class_path": "FloatDistribution",
            "init_args": {"low": 1e-4, "high": 1e-2, "log": True},
        }
    }
    search_file = tmp_path / "search.yaml"
    search_file.write_text(yaml.safe_dump(search))
    where = (
        ["--storage", request.getfixturevalue("postgresql_url")] if storage == "postgresql" else []
    )
    trials = [
        "--trainer.max_epochs=1",
        "--trainer.limit_train_batches=4",
        "--trainer.limit_val_batches=2",
        "--trainer.limit_test_batches=2",
    ]
    script = with_resources(
        project / "scripts" / "tune.sbatch", tmp_path, **{"array": "0-1", "ntasks-per-node": "1"}
    )
    shutil.rmtree(project / "logs" / "tune" / study_name, ignore_errors=True)
    job = slurm_cluster.submit(
        [str(script), f"--search={search_file}", *where, *data_flags, *FIT, *trials], project, env
    )
    states = slurm_cluster.wait(job, timeout=180)
    assert states == ["COMPLETED", "COMPLETED"], job_output(project, job)
    with (project / "logs" / "tune" / study_name / "trials.csv").open(newline="") as file:
        rows = list(csv.DictReader(file))
    print(
        "\n".join(
            f"{row['number']} {row['state']} {search['metric']}={row[search['metric']]} "
            f"lr={row['model.optimizer.init_args.lr']} {row['worker']}"
            for row in rows
        )
    )
    finished = [row for row in rows if row["state"] in ("COMPLETE", "PRUNED")]
    numbers = [int(row["number"]) for row in rows]
    assert len(finished) == n_trials and sorted(numbers) == list(range(len(rows)))
    assert len({row["worker"] for row in finished}) == 2, "both tasks of the array worked"


def torchrun(project: Path, rank: int, port: int, run_dir: Path, *flags: str) -> list[str]:
    return [
        str(Path(sys.executable).parent / "torchrun"),
        *("--nnodes", "2", "--node-rank", str(rank), "--nproc-per-node", "1"),
        *("--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}"),
        *("-m", f"{package_of(project)}.train", "--trainer.num_nodes=2", "--trainer.devices=1"),
        *("--trainer.strategy=ddp", *FIT, f"--trainer.default_root_dir={run_dir}", *flags),
    ]


def start_nodes(
    project: Path, env: dict[str, str], run_dir: Path, *flags: str
) -> list[subprocess.Popen]:
    [port] = free_ports(1)
    # torchrun sets one thread per process only for several processes per node; as the others.
    node_env = {**os.environ, **env, "OMP_NUM_THREADS": "1"}
    return [
        subprocess.Popen(
            torchrun(project, rank, port, run_dir, *flags),
            cwd=project,
            env=node_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        for rank in (0, 1)
    ]


def test_two_torchrun_nodes_on_loopback_match_the_two_process_run(
    project: Path, data_flags: list[str], env: dict[str, str], launcher_run: dict, tmp_path: Path
) -> None:
    nodes = start_nodes(project, env, tmp_path, *data_flags)
    outputs = [node.communicate(timeout=120)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outputs[0][-3000:]
    [summary] = tmp_path.rglob("test_metrics.json")
    print("torchrun:", metrics_of(json.loads(summary.read_text())))
    assert metrics_of(json.loads(summary.read_text())) == metrics_of(launcher_run)


def test_when_one_node_is_killed_the_other_ends_at_once_saying_why(
    project: Path, data_flags: list[str], env: dict[str, str], tmp_path: Path
) -> None:
    nodes = start_nodes(
        project,
        env,
        tmp_path,
        *data_flags,
        "--trainer.max_epochs=50",
        "--early_stopping.patience=100",
    )
    for line in nodes[0].stdout:
        if line.startswith("epoch 2/"):
            break
    # The whole of node 1: its torchrun agent and the training process it started.
    for pid in [nodes[1].pid, *descendants(nodes[1].pid)]:
        os.kill(pid, signal.SIGKILL)
    killed = time.monotonic()
    output = nodes[0].communicate(timeout=120)[0]
    seconds = time.monotonic() - killed
    print(
        f"node 0 ended {seconds:.1f} s after node 1 was killed, exit status {nodes[0].returncode}"
    )
    assert nodes[0].returncode != 0 and seconds < 30
    assert "error: a process of this run stopped, so this one cannot go on" in output, output[
        -3000:
    ]
    nodes[1].wait()


def descendants(pid: int) -> list[int]:
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError):
                continue
            if parent == pid:
                children += [int(entry.name), *descendants(int(entry.name))]
    return children
