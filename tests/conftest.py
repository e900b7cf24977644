"""Shared helpers: bake the template once per option set, run commands in a baked project."""

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

TEMPLATE_DIR = Path(__file__).resolve().parents[1]

Bake = Callable[..., Path]


@pytest.fixture(scope="session")
def bake(cookies_session) -> Bake:
    """Bake with the given answers (the rest default) and return the project folder.

    Bakes are cached per set of answers, so tests that share one only pay for it once.
    """
    baked: dict[tuple, Path] = {}

    def bake_with(**answers: str) -> Path:
        key = tuple(sorted(answers.items()))
        if key not in baked:
            result = cookies_session.bake(extra_context=answers, template=str(TEMPLATE_DIR))
            assert result.exit_code == 0, f"bake with {answers} failed: {result.exception!r}"
            baked[key] = result.project_path
        return baked[key]

    return bake_with


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


def train_in(
    project: Path,
    data_args: dict[str, object],
    *flags: str,
    run_dir: Path | None = None,
    **run_args: Any,
) -> subprocess.CompletedProcess:
    """The default bake's train command with its config, as a user runs it, on one device:
    the data module's arguments, then ``flags``; with ``run_dir``, runs and logs go there."""
    into_run_dir = (
        [f"--trainer.default_root_dir={run_dir}", f"--trainer.logger.init_args.save_dir={run_dir}"]
        if run_dir
        else []
    )
    return run_in(
        project,
        "-m",
        "mnist_lab.train",
        "--config",
        "configs/default.yaml",
        *(f"--data.{name}={value}" for name, value in data_args.items()),
        "--trainer.devices=1",
        *into_run_dir,
        *flags,
        **run_args,
    )


def write_sample(project: Path, data_dir: Path) -> dict[str, object]:
    """Write the baked data module's own test sample into ``data_dir`` and return the data
    module's arguments that read it. Runs in a subprocess, so that bakes of the same package
    name never meet in this process."""
    package = next(path.name for path in (project / "src").iterdir() if path.is_dir())
    code = (
        "import json, sys; from pathlib import Path; "
        f"from {package}.data import ImageDataModule; "
        f"print(json.dumps(ImageDataModule.write_sample(Path({str(data_dir)!r}))))"
    )
    return json.loads(run_in(project, "-c", code).stdout.strip().splitlines()[-1])
