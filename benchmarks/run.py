"""Bake the default project, train it on real MNIST and print one table of figures.

    python benchmarks/run.py [--data-dir DIR] [--epochs N]

DIR holds MNIST/raw (default: $MNIST_DATA_DIR). Measures, on whatever device torch sees:
test accuracy of the best checkpoint, whole-process wall time of the train command, its fit
time, the time until validation accuracy first reaches 99 %, its peak RSS, the wall time of
`train --help`, and the fit time relative to a plain PyTorch loop over the same model, data,
batch size and schedule (benchmarks/plain_loop.py). Shared machines are noisy, so the train
command and the plain loop run alternately ``--repeats`` times and the fastest of each counts.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from cookiecutter.main import cookiecutter

HERE = Path(__file__).resolve().parent
TEMPLATE_DIR = HERE.parent


def timed(command: list[str], cwd: Path, env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, cwd=cwd, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", default=os.environ.get("MNIST_DATA_DIR"))
    parser.add_argument("--epochs", type=int, help="override the default config's max_epochs")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each; the fastest counts")
    args = parser.parse_args()
    if not args.data_dir:
        sys.exit("error: pass --data-dir or set MNIST_DATA_DIR to a folder holding MNIST/raw")
    data_dir = str(Path(args.data_dir).resolve())

    workdir = Path(tempfile.mkdtemp(prefix="lightning-template-bench-"))
    project = Path(cookiecutter(str(TEMPLATE_DIR), no_input=True, output_dir=str(workdir)))
    env = {**os.environ, "PYTHONPATH": f"{project / 'src'}{os.pathsep}{HERE}"}
    timer_file = workdir / "fit_timer.json"
    timer_config = workdir / "timer.yaml"
    timer_config.write_text(
        "trainer:\n  callbacks:\n    - class_path: fit_timer.FitTimer\n"
        f"      init_args:\n        output: {json.dumps(str(timer_file))}\n"
    )
    python = [sys.executable, "-m", "mnist_lab.train"]
    help_seconds = timed([*python, "--help"], project, env)

    train = [*python, "--config", "configs/default.yaml", "--config", str(timer_config)]
    train += [f"--data.data_dir={data_dir}", "--trainer.enable_progress_bar=false"]
    if args.epochs:
        train.append(f"--trainer.max_epochs={args.epochs}")

    runs, plain_fits = [], []
    for _ in range(args.repeats):
        wall_seconds = timed(train, project, env)
        summary_file = max(project.glob("logs/**/test_metrics.json"), key=os.path.getmtime)
        test_acc = json.loads(summary_file.read_text())["test/acc"]
        timer = json.loads(timer_file.read_text())
        runs.append((wall_seconds, test_acc, timer))
        epochs = str(len(timer["epochs"]))
        plain = subprocess.run(
            [sys.executable, str(HERE / "plain_loop.py"), str(project / "src"), data_dir, epochs],
            check=True,
            capture_output=True,
            text=True,
        )
        plain_fits.append(json.loads(plain.stdout.splitlines()[-1])["fit_seconds"])
    peak_rss_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    wall_seconds, test_acc, timer = min(runs, key=lambda run: run[0])
    plain_fit = min(plain_fits)
    fit_seconds = min(run[2]["fit_seconds"] for run in runs)
    to_99 = next((e["seconds"] for e in timer["epochs"] if e["val_acc"] >= 0.99), None)

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    device += f" ({os.cpu_count()} CPU cores)"
    rows = [
        ("device", device),
        ("epochs", epochs),
        ("test accuracy", f"{test_acc:.2%} (runs: {', '.join(f'{r[1]:.2%}' for r in runs)})"),
        ("whole-process wall", f"{wall_seconds:.1f} s"),
        ("fit time", f"{fit_seconds:.1f} s"),
        ("time to 99 % (val)", f"{to_99:.1f} s" if to_99 is not None else "not reached"),
        ("peak RSS (any run)", f"{peak_rss_mb:.0f} MB"),
        ("train --help", f"{help_seconds:.1f} s"),
        ("plain PyTorch fit", f"{plain_fit:.1f} s"),
        ("Lightning / plain", f"{fit_seconds / plain_fit:.2f}x"),
    ]
    width = max(len(name) for name, _ in rows)
    print(f"\n{'figure'.ljust(width)} | value\n{'-' * width}-|------")
    for name, value in rows:
        print(f"{name.ljust(width)} | {value}")
    print(f"\n(baked project and logs: {project})")


if __name__ == "__main__":
    main()
