"""What the template's tests share: where the template is, and running a baked project's
commands as a user would, with its ``src`` importable."""

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

TEMPLATE_DIR = Path(__file__).resolve().parents[1]
# Every wing on: the answers whose bake holds every file and test of the project.
EVERY_OPTION = {"serve": "yes", "tune": "yes", "docker": "yes"}

Bake = Callable[..., Path]


def run_in(
    project: Path, *args: str, timeout: float = 300, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Run Python in a baked project with its ``src`` importable; fail with its output."""
    env = {**os.environ, **(env or {}), "PYTHONPATH": str(project / "src")}
    completed = subprocess.run(
        [sys.executable, *args],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert completed.returncode == 0, (
        f"{' '.join(args)} exited {completed.returncode}\n"
        f"--- stdout\n{completed.stdout[-3000:]}\n--- stderr\n{completed.stderr[-3000:]}"
    )
    return completed


def package_of(project: Path) -> str:
    return next(path.name for path in (project / "src").iterdir() if path.is_dir())


def train_in(
    project: Path,
    data_args: dict[str, Any],
    *flags: str,
    run_dir: Path | None = None,
    **run_args: Any,
) -> subprocess.CompletedProcess:
    """The bake's train command as a user runs it (its packaged config), on one device: the
    data module's arguments, then ``flags``; with ``run_dir``, runs and logs go there."""
    into_run_dir = [f"--trainer.default_root_dir={run_dir}"] if run_dir else []
    train = ["-m", f"{package_of(project)}.train", *data_flags(data_args), "--trainer.devices=1"]
    return run_in(project, *train, *into_run_dir, *flags, **run_args)


def data_flags(data_args: dict[str, Any]) -> list[str]:
    """The train flags that give the data module these arguments."""
    return [
        f"--data.{name}={value if isinstance(value, str | Path) else json.dumps(value)}"
        for name, value in data_args.items()
    ]


def write_sample(project: Path, data_dir: Path) -> dict[str, Any]:
    """Write the baked data module's own test sample into ``data_dir`` and return the data
    module's arguments that read it. Runs in a subprocess, so that bakes of the same package
    name never meet in this process."""
    code = (
        "import json; from pathlib import Path; "
        f"from {package_of(project)}.data import ImageDataModule; "
        f"print(json.dumps(ImageDataModule.write_sample(Path({str(data_dir)!r}))))"
    )
    return json.loads(run_in(project, "-c", code).stdout.strip().splitlines()[-1])


def bake_suite(project: Path, *pytest_args: str, timeout: float = 900) -> str:
    """Run a bake's own test suite; return its summary line, checked to have passed."""
    completed = run_in(
        project, "-m", "pytest", "-q", "-p", "no:cacheprovider", *pytest_args, timeout=timeout
    )
    return completed.stdout.strip().splitlines()[-1]
