"""What the benchmarks share: baking the template, running and timing a baked project's
commands as a user runs them, and printing tables."""

import importlib.metadata
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cookiecutter.main import cookiecutter

HERE = Path(__file__).resolve().parent
TEMPLATE_DIR = HERE.parent
PACKAGE = "mnist_lab"  # the default package name; the benchmarks bake with default names


def bake(prefix: str, **answers: str) -> tuple[Path, Path, dict[str, str]]:
    """Bake the template (default answers but ``answers``) into a new temporary folder; return
    that folder, the project, and the environment that runs its commands (its src and this
    folder importable, so that the benchmarks' own callbacks load by class path)."""
    workdir = Path(tempfile.mkdtemp(prefix=f"lightning-template-{prefix}-"))
    project = Path(
        cookiecutter(
            str(TEMPLATE_DIR), no_input=True, output_dir=str(workdir), extra_context=answers
        )
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(project / "src"), str(HERE)])}
    return workdir, project, env


def command(module: str, *args: str) -> list[str]:
    """A command of the baked package, e.g. ``command("train", "--trainer.max_epochs=1")``."""
    return [sys.executable, "-m", f"{PACKAGE}.{module}", *args]


def measured(
    args: list[str], cwd: Path, env: dict[str, str]
) -> tuple[float, resource.struct_rusage]:
    """Wall seconds and the resource usage of one child process (and its own children)."""
    start = time.perf_counter()
    process = subprocess.Popen(args, cwd=cwd, env=env, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"error: {' '.join(args)} failed")
    return wall, usage


def spread(values: list[float], fmt: str = "{:.1f}") -> str:
    """The median and, for several values, the range: ``12.3 (11.9-13.0)``."""
    median = fmt.format(statistics.median(values))
    return (
        median
        if len(values) < 2
        else f"{median} ({fmt.format(min(values))}-{fmt.format(max(values))})"
    )


def print_table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, ["-" * width for width in widths], *rows]:
        print(" | ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
    print()


def versions(*packages: str) -> str:
    """The installed version of each package, as one line."""
    found = []
    for package in packages:
        try:
            found.append(f"{package} {importlib.metadata.version(package)}")
        except importlib.metadata.PackageNotFoundError:
            found.append(f"{package} (not installed)")
    return ", ".join(found)


def machine() -> str:
    """The CPU, its cores, and the load average now."""
    name = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        models = [
            line.split(":", 1)[1].strip()
            for line in cpuinfo.read_text().splitlines()
            if line.startswith("model name")
        ]
        name = models[0] if models else name
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    return f"{name}, {os.cpu_count()} CPU cores, load average {load}"
