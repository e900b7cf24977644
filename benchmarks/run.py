"""Bake the default project, train it on real MNIST and print tables of figures.

    python benchmarks/run.py [--data-dir DIR] [--repeats 2] [--seeds 3]

DIR holds MNIST/raw (default: $MNIST_DATA_DIR). On whatever device torch sees, it measures the
default train command (configs/default.yaml) against the yardstick, the previous default
(benchmarks/yardstick.yaml), and a plain PyTorch loop over the same model, data, batch size and
schedule (benchmarks/plain_loop.py), alternating the three ``--repeats`` times so that all meet
the same machine load. It reports the fastest whole-process wall time, user and system CPU time,
peak RSS, test accuracy, fit time and time to 99 % validation accuracy of the two configs, and
the fastest fit of Lightning and of the plain loop. The default then trains with further seeds
(test accuracy of each).
"""

import argparse
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from common import HERE, bake, command, measured, print_table


@dataclass
class Run:
    wall: float
    user: float
    system: float
    peak_rss_mb: float
    test_acc: float
    fit: float
    epochs: int
    to_99: float | None


def train_run(train: list[str], project: Path, env: dict[str, str], timer_file: Path) -> Run:
    wall, usage = measured(train, project, env)
    summary_file = max(project.glob("logs/**/test_metrics.json"), key=os.path.getmtime)
    timer = json.loads(timer_file.read_text())
    to_99 = next((e["seconds"] for e in timer["epochs"] if e["val_acc"] >= 0.99), None)
    return Run(
        wall=wall,
        user=usage.ru_utime,
        system=usage.ru_stime,
        peak_rss_mb=usage.ru_maxrss / 1024,
        test_acc=json.loads(summary_file.read_text())["test/acc"],
        fit=timer["fit_seconds"],
        epochs=len(timer["epochs"]),
        to_99=to_99,
    )


def plain_fit(project: Path, data_dir: str, epochs: int) -> float:
    """Fit seconds of the plain PyTorch loop over the default's model, data and schedule."""
    plain = subprocess.run(
        [sys.executable, str(HERE / "plain_loop.py"), str(project / "src"), data_dir, str(epochs)],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(plain.stdout.splitlines()[-1])["fit_seconds"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", default=os.environ.get("MNIST_DATA_DIR"))
    parser.add_argument("--repeats", type=int, default=2, help="alternating runs of each config")
    parser.add_argument("--seeds", type=int, default=3, help="seeds of the default's accuracy")
    args = parser.parse_args()
    if not args.data_dir:
        sys.exit("error: pass --data-dir or set MNIST_DATA_DIR to a folder holding MNIST/raw")
    data_dir = str(Path(args.data_dir).resolve())

    workdir, project, env = bake("bench")
    timer_file = workdir / "fit_timer.json"
    timer_config = workdir / "timer.yaml"
    timer_config.write_text(
        "trainer:\n  callbacks:\n    - class_path: fit_timer.FitTimer\n"
        f"      init_args:\n        output: {json.dumps(str(timer_file))}\n"
    )
    help_seconds, _ = measured(command("train", "--help"), project, env)
    # The packaged default config, as every run reads it, with the timer added.
    base = command("train", "--config", str(timer_config))
    base += [f"--data.data_dir={data_dir}", "--trainer.enable_progress_bar=false"]
    configs = {"default": base, "yardstick": [*base, "--config", str(HERE / "yardstick.yaml")]}

    runs: dict[str, list[Run]] = {name: [] for name in configs}
    plain_fits = []
    for _ in range(args.repeats):
        for name, train in configs.items():
            runs[name].append(train_run(train, project, env, timer_file))
        plain_fits.append(plain_fit(project, data_dir, epochs=runs["default"][-1].epochs))
    seeds = [42]  # the config's own seed, run above
    for seed in range(43, 42 + args.seeds):
        seeds.append(seed)
        runs["default"].append(
            train_run([*base, f"--seed_everything={seed}"], project, env, timer_file)
        )

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    print(f"\ndevice: {device} ({os.cpu_count()} CPU cores); fastest of {args.repeats} runs each\n")
    header = ["figure", "default", "yardstick (0.1.0)", "default / yardstick"]
    fastest = {name: min(runs[name][: args.repeats], key=lambda run: run.wall) for name in runs}
    new, old = fastest["default"], fastest["yardstick"]

    def ratio(a: float | None, b: float | None) -> str:
        return f"{a / b:.2f}x" if a and b else ""

    def seconds(value: float | None) -> str:
        return f"{value:.1f} s" if value is not None else "not reached"

    rows = [
        ["whole-process wall", seconds(new.wall), seconds(old.wall), ratio(new.wall, old.wall)],
        ["fit", seconds(new.fit), seconds(old.fit), ratio(new.fit, old.fit)],
        ["time to 99 % (val)", seconds(new.to_99), seconds(old.to_99), ratio(new.to_99, old.to_99)],
        ["user CPU", seconds(new.user), seconds(old.user), ratio(new.user, old.user)],
        ["system CPU", seconds(new.system), seconds(old.system), ratio(new.system, old.system)],
        ["system / user", f"{new.system / new.user:.1%}", f"{old.system / old.user:.1%}", ""],
        ["peak RSS", f"{new.peak_rss_mb:.0f} MB", f"{old.peak_rss_mb:.0f} MB", ""],
        ["test accuracy", f"{new.test_acc:.2%}", f"{old.test_acc:.2%}", ""],
    ]
    print_table(header, rows)
    accuracies = [
        runs["default"][0].test_acc,
        *(run.test_acc for run in runs["default"][args.repeats :]),
    ]
    print_table(
        ["default, seed", "test accuracy"],
        [
            *([str(seed), f"{acc:.2%}"] for seed, acc in zip(seeds, accuracies, strict=True)),
            ["mean", f"{sum(accuracies) / len(accuracies):.2%}"],
        ],
    )
    lightning_fit = min(run.fit for run in runs["default"][: args.repeats])
    print_table(
        ["figure", "value"],
        [
            ["train --help", seconds(help_seconds)],
            ["plain PyTorch fit (same model, data, schedule)", seconds(min(plain_fits))],
            ["Lightning fit (default)", seconds(lightning_fit)],
            ["Lightning fit / plain fit", ratio(lightning_fit, min(plain_fits))],
        ],
    )
    print(f"(baked project and logs: {project})")


if __name__ == "__main__":
    main()
