"""A throw-away one-node Slurm cluster (munged, slurmctld, slurmd) for tests.

Real daemons, so tests see what users see on a cluster: batch jobs, arrays, requeues and
signals. Everything (munge key and socket, slurm.conf, state, spool, logs) lives in one
temporary folder and every process is stopped at teardown. Use it with
``from slurm_cluster import slurm_cluster  # noqa: F401`` in a test module or conftest.

Needs root (slurmd starts jobs as their user) and Debian's ``slurm-wlm`` and ``munge``;
the fixture skips otherwise. The plugins chosen need no cgroups, so it runs in containers.
"""

import contextlib
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

SLURM_BINARIES = ("slurmctld", "slurmd", "sbatch", "srun", "squeue", "sinfo", "scontrol", "scancel")
MUNGE_BINARIES = ("munged",)
MUNGE_USER = "munge"
# Job states a job leaves only by a requeue (which sends it back to PENDING).
FINAL_STATES = frozenset(
    {
        "COMPLETED",
        "FAILED",
        "CANCELLED",
        "TIMEOUT",
        "NODE_FAIL",
        "OUT_OF_MEMORY",
        "PREEMPTED",
        "BOOT_FAIL",
        "DEADLINE",
    }
)
START_TIMEOUT = 60.0  # seconds for munged, slurmctld and slurmd to come up and the node to idle
STOP_TIMEOUT = 15.0  # seconds between SIGTERM and SIGKILL at teardown
# Seconds a step credential lives, and a requeued job waits before it may run again.
CRED_EXPIRE = 10
CANCEL_TIMEOUT = 45.0  # seconds for jobs left at teardown to end (KillWait is 30 by default)
# A key in `scontrol show job -o`: starts a word, capitalised (values such as TRES=cpu=1 or a
# Command's --flag=x never match, since their `=` does not follow whitespace and a capital).
_KEY = re.compile(r"(?:^|\s)([A-Z][A-Za-z0-9_/:]*)=")
# Variables of an enclosing job would leak into sbatch and srun and confuse them.
_SLURM_PREFIXES = ("SLURM_", "SBATCH_", "SRUN_", "SALLOC_", "SQUEUE_", "SINFO_", "SCANCEL_")


def missing_requirements() -> str | None:
    """Why this machine cannot run the cluster, or None when it can."""
    missing = [name for name in SLURM_BINARIES + MUNGE_BINARIES if shutil.which(name) is None]
    if missing:
        return f"Slurm/munge binaries not found: {', '.join(missing)}"
    if os.geteuid() != 0:
        return "a test Slurm cluster needs root (slurmd runs jobs as their user)"
    try:
        pwd.getpwnam(MUNGE_USER)
    except KeyError:
        return f"no {MUNGE_USER!r} user to run munged as"
    return None


def parse_key_values(line: str) -> dict[str, str]:
    """Parse one ``scontrol show ... -o`` record; values may hold spaces (Command, WorkDir)."""
    matches = list(_KEY.finditer(line))
    return {
        match[1]: line[match.end() : following.start() if following else len(line)].rstrip()
        for match, following in zip(matches, [*matches[1:], None], strict=True)
    }


def free_ports(count: int) -> list[int]:
    """Distinct TCP ports that are free now (kept bound together so they differ)."""
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _memory_mib() -> int:
    """A RealMemory slurmd will not find too high (it drains a node that has less)."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return max(int(line.split()[1]) // 1024 * 9 // 10, 1)
    return 1


def _tail(path: Path, lines: int = 30) -> str:
    """The last ``lines`` of a log, headed by its path."""
    text = path.read_text(errors="replace") if path.exists() else "(missing)"
    return f"--- {path}\n" + "\n".join(text.splitlines()[-lines:])


def _processes_using(root: Path) -> dict[int, str]:
    """Processes with a file open, or their cwd, under ``root`` (pid: command line).

    slurmstepd daemonises away from slurmd, so this is how leftovers of this cluster
    (and only of this one) are found: they keep the slurmd log open.
    """
    prefix = str(root) + os.sep
    found: dict[int, str] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            links = [proc / "cwd", *(proc / "fd").iterdir()]
            if any(os.readlink(link).startswith(prefix) for link in links):
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                found[int(proc.name)] = cmdline.strip()
        except OSError:  # gone, or a kernel thread
            continue
    return found


@dataclass
class SlurmCluster:
    """A running one-node cluster: its folder, client environment and job helpers."""

    root: Path
    env: dict[str, str]
    node: str
    cpus: int
    conf: Path
    _daemons: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict, repr=False)

    @classmethod
    def start(cls, root: Path) -> "SlurmCluster":
        """Write the configuration into ``root`` and start the daemons; stop them on failure."""
        node = socket.gethostname().split(".")[0]
        cpus = os.cpu_count() or 1
        env = {k: v for k, v in os.environ.items() if not k.startswith(_SLURM_PREFIXES)}
        env["SLURM_CONF"] = str(root / "slurm.conf")
        cluster = cls(root=root, env=env, node=node, cpus=cpus, conf=root / "slurm.conf")
        try:
            cluster._start_munged()
            cluster._write_conf()
            cluster._spawn("slurmctld", ["slurmctld", "-D", "-f", str(cluster.conf)])
            cluster._spawn("slurmd", ["slurmd", "-D", "-f", str(cluster.conf), "-N", node])
            cluster._wait_for_idle_node()
        except BaseException:
            cluster.stop()
            raise
        return cluster

    # --- client helpers

    def run(
        self, *args: str, cwd: Path | None = None, timeout: float = 30, env: dict | None = None
    ) -> str:
        """Run a Slurm client command against this cluster; its stdout, or fail with stderr.
        ``env`` adds variables (sbatch hands them on to the job)."""
        completed = subprocess.run(
            args,
            cwd=cwd,
            env={**self.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if completed.returncode != 0:
            raise RuntimeError(
                f"{' '.join(args)} exited {completed.returncode}\n"
                f"--- stdout\n{completed.stdout}\n--- stderr\n{completed.stderr}"
            )
        return completed.stdout

    def submit(self, args: list[str], cwd: Path, env: dict | None = None) -> str:
        """``sbatch --parsable`` from ``cwd`` (where output files land); the job id."""
        return self.run("sbatch", "--parsable", *args, cwd=cwd, env=env).strip().split(";")[0]

    def states(self, job_id: str) -> list[str]:
        """The JobState of every record of the job: each task of an array."""
        lines = self.run("scontrol", "show", "job", "-o", job_id).splitlines()
        return [parse_key_values(line)["JobState"] for line in lines if line.strip()]

    def info(self, job_id: str) -> dict[str, str]:
        """The job's ``scontrol show job -o`` record (an array's first one, if several)."""
        return parse_key_values(self.run("scontrol", "show", "job", "-o", job_id).splitlines()[0])

    def state(self, job_id: str) -> str:
        """The job's JobState, e.g. PENDING, RUNNING, COMPLETED."""
        return self.info(job_id)["JobState"]

    def wait(self, job_id: str, timeout: float = 60.0, interval: float = 0.25) -> list[str]:
        """Poll until every record of the job (each task of an array) is in a final state, and
        return their states. A requeued job goes back to PENDING and runs again, so this
        waits through requeues."""
        deadline = time.monotonic() + timeout
        while not FINAL_STATES.issuperset(states := self.states(job_id)):
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"job {job_id} still {states} after {timeout}s: {self.info(job_id)}\n"
                    + self.logs()
                )
            time.sleep(interval)
        return states

    def start_now(self, job_id: str, timeout: float = 60.0) -> None:
        """Let a requeued job run again now rather than after ``cred_expire`` seconds.

        Slurm sets the begin time once the job has left COMPLETING, overwriting an earlier
        update, so this waits for PENDING with Reason=BeginTime before setting StartTime=now.
        """
        deadline = time.monotonic() + timeout
        while (info := self.info(job_id))["Reason"] != "BeginTime" or info["JobState"] != "PENDING":
            if info["JobState"] in FINAL_STATES or time.monotonic() > deadline:
                raise RuntimeError(f"job {job_id} is not waiting for its begin time: {info}")
            time.sleep(0.1)
        self.run("scontrol", "update", f"JobId={job_id}", "StartTime=now")

    def logs(self, lines: int = 30) -> str:
        """The tail of every daemon's log, for failure messages."""
        # munged in the foreground logs to stderr, hence munged.out and no munged.log.
        names = ["munged.out", "slurmctld.log", "slurmctld.out", "slurmd.log", "slurmd.out"]
        return "\n".join(_tail(self.root / name, lines) for name in names)

    # --- start-up

    def _start_munged(self) -> None:
        """Run munged as munge, as it insists, with its own key, socket, log and seed.

        munged refuses a key not owned by it or readable by others, and paths others may
        write to; and it wants its socket's folder searchable by all, so clients reach it.
        """
        user = pwd.getpwnam(MUNGE_USER)
        self.root.chmod(0o755)  # munge must reach its folder; mkdtemp makes 0700
        folder = self.root / "munge"
        folder.mkdir()
        key = folder / "munge.key"
        key.write_bytes(os.urandom(1024))
        for path, mode in ((key, 0o400), (folder, 0o755)):
            os.chown(path, user.pw_uid, user.pw_gid)
            path.chmod(mode)
        self._spawn(
            "munged",
            [
                "munged",
                "--foreground",
                f"--key-file={key}",
                f"--socket={self.munge_socket}",
                f"--pid-file={folder / 'munged.pid'}",
                f"--log-file={folder / 'munged.log'}",
                f"--seed-file={folder / 'munged.seed'}",
            ],
            user=user.pw_uid,
            group=user.pw_gid,
        )
        self._wait_until(self.munge_socket.exists, "munged to create its socket")

    @property
    def munge_socket(self) -> Path:
        """munged's socket; clients find it through AuthInfo in slurm.conf."""
        return self.root / "munge" / "munge.socket"

    def _write_conf(self) -> None:
        """A slurm.conf for this one node that needs no cgroups, database or system paths."""
        for name in ("state", "spool"):
            (self.root / name).mkdir()
        (self.root / "plugstack.conf").write_text("")  # not the system's SPANK plugins
        ctld_port, slurmd_port = free_ports(2)
        options = {
            "ClusterName": "pytest",
            "SlurmctldHost": f"{self.node}(127.0.0.1)",
            "SlurmctldPort": str(ctld_port),
            "SlurmdPort": str(slurmd_port),
            "SlurmUser": "root",
            "SlurmdUser": "root",
            "AuthType": "auth/munge",
            "CredType": "cred/munge",
            # cred_expire (120 s by default) also delays a requeued job's restart by as much.
            "AuthInfo": f"socket={self.munge_socket},cred_expire={CRED_EXPIRE}",
            "StateSaveLocation": str(self.root / "state"),
            "SlurmdSpoolDir": str(self.root / "spool"),
            "SlurmctldPidFile": str(self.root / "slurmctld.pid"),
            "SlurmdPidFile": str(self.root / "slurmd.pid"),
            "SlurmctldLogFile": str(self.root / "slurmctld.log"),
            "SlurmdLogFile": str(self.root / "slurmd.log"),
            "PlugStackConfig": str(self.root / "plugstack.conf"),
            "ProctrackType": "proctrack/pgid",
            "TaskPlugin": "task/none",
            "JobAcctGatherType": "jobacct_gather/none",
            "AccountingStorageType": "accounting_storage/none",
            "JobCompType": "jobcomp/none",
            "MpiDefault": "none",
            "SwitchType": "switch/none",
            "SchedulerType": "sched/builtin",
            # A requeued job that became eligible waits for the next full pass (60 s by default).
            "SchedulerParameters": "sched_interval=2",
            "SelectType": "select/cons_tres",
            "SelectTypeParameters": "CR_CPU",
            "ReturnToService": "2",
            "JobRequeue": "1",
            "MaxArraySize": "1001",
            "MinJobAge": "600",
            "MailProg": "/bin/true",
        }
        lines = [f"{key}={value}" for key, value in options.items()]
        lines.append(
            f"NodeName={self.node} NodeAddr=127.0.0.1 CPUs={self.cpus} "
            f"RealMemory={_memory_mib()} State=UNKNOWN"
        )
        lines.append(f"PartitionName=debug Nodes={self.node} Default=YES MaxTime=INFINITE State=UP")
        self.conf.write_text("\n".join(lines) + "\n")

    def _spawn(
        self, name: str, argv: list[str], user: int | None = None, group: int | None = None
    ) -> None:
        """Start a daemon in the foreground, in its own session, output to ``<name>.out``."""
        with open(self.root / f"{name}.out", "wb") as out:
            self._daemons[name] = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env,
                start_new_session=True,
                user=user,
                group=group,
                extra_groups=None if user is None else [],  # not root's groups
            )

    def _wait_until(self, ready: Callable[[], bool], what: str) -> None:
        """Poll ``ready``; fail with the logs if a daemon exits or START_TIMEOUT passes."""
        deadline = time.monotonic() + START_TIMEOUT
        while not ready():
            dead = {name: p.returncode for name, p in self._daemons.items() if p.poll() is not None}
            if dead or time.monotonic() > deadline:
                problem = f"exited {dead}" if dead else f"timed out after {START_TIMEOUT}s"
                raise RuntimeError(f"waiting for {what}: {problem}\n{self.logs()}")
            time.sleep(0.2)

    def _wait_for_idle_node(self) -> None:
        def idle() -> bool:
            try:
                return self.run("sinfo", "-h", "-N", "-o", "%T", timeout=10).strip() == "idle"
            except (RuntimeError, subprocess.TimeoutExpired):  # slurmctld not listening yet
                return False

        self._wait_until(idle, f"node {self.node} to be idle")

    # --- teardown

    def stop(self) -> None:
        """Cancel jobs, stop slurmd, slurmctld and munged (TERM, then KILL); check none is left."""
        if "slurmctld" in self._daemons and self._daemons["slurmctld"].poll() is None:
            self._cancel_all_jobs()
        for name in ("slurmd", "slurmctld", "munged"):
            if name in self._daemons:
                _terminate(self._daemons[name])
        _wait_for_zombie_stepds()
        leftovers = _processes_using(self.root)
        for pid in leftovers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        alive = [name for name, p in self._daemons.items() if p.poll() is None]
        assert not alive and not leftovers, (
            f"Slurm test cluster left processes: daemons {alive}, others {leftovers}"
        )

    def _cancel_all_jobs(self) -> None:
        """slurmstepd outlives slurmd, so jobs must end before the daemons stop."""
        try:
            self.run("scancel", "--user", str(os.getuid()))
            deadline = time.monotonic() + CANCEL_TIMEOUT
            while self.run("squeue", "-h", "-o", "%i").strip():
                if time.monotonic() > deadline:
                    break
                time.sleep(0.5)
        except (RuntimeError, subprocess.TimeoutExpired):
            pass  # leftovers are killed and reported by stop()


def _wait_for_zombie_stepds(timeout: float = 5.0) -> None:
    """Give init a moment to reap exited slurmstepds (they daemonise, so init is their parent).

    They hold no resources, but would show in ``pgrep slurm`` right after a test session.
    """
    deadline = time.monotonic() + timeout
    while _zombie_stepd_exists() and time.monotonic() < deadline:
        time.sleep(0.1)


def _zombie_stepd_exists() -> bool:
    """Whether any exited slurmstepd awaits reaping (``/proc/<pid>/stat`` state Z)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            if "(slurmstepd) Z" in stat.read_text():
                return True
    return False


def _terminate(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL if the daemon has not exited after ``STOP_TIMEOUT``."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(STOP_TIMEOUT)


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    """A one-node Slurm cluster for the whole session; skips without Slurm, munge or root.

    The folder comes from mkdtemp, not tmp_path_factory: munge's socket path must stay
    short (108 bytes) and its ancestors reachable by the munge user.
    """
    reason = missing_requirements()
    if reason:
        pytest.skip(reason)
    root = Path(tempfile.mkdtemp(prefix="slurm-cluster-"))
    try:
        cluster = SlurmCluster.start(root)
        try:
            yield cluster
        finally:
            cluster.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)
