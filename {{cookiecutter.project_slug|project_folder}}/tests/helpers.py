"""What the tests share: quick fits, command runs, and callbacks they inject into real fits (by
class path, ``helpers.<Name>``, so that subprocesses can load them too)."""

import contextlib
import csv
import io
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
{%- if cookiecutter.model == "backbone" %}
import timm
{%- endif %}
import torch
from PIL import Image
from pytorch_lightning.callbacks import Timer
{%- if cookiecutter.model == "backbone" %}
from safetensors.torch import save_file
{%- endif %}

from {{ cookiecutter.package_name }}.train import TrainCLI, train

PROJECT = Path(__file__).resolve().parents[1]
PACKAGE = "{{ cookiecutter.package_name }}"

# Small, quick fits on one CPU process; tests add or override flags after these.
QUICK_FIT = [
    "--trainer.max_epochs=2",
    "--trainer.accelerator=cpu",
    "--trainer.devices=1",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
{%- if cookiecutter.model == "backbone" %}
    # No hub in tests: timm's smallest ResNet, from random weights (test_backbone.py loads
    # pretrained ones from a file), at the peak rate of the project's other networks.
    "--model.net.init_args.name=test_resnet",
    "--model.net.init_args.pretrained=false",
    "--model.scheduler.init_args.max_lr=0.01",
{%- endif %}
]

Fit = Callable[..., TrainCLI]
{%- if cookiecutter.model == "backbone" %}

# timm's smallest ResNet (0.4 M parameters, with BatchNorm): fits in seconds on a CPU.
TEST_BACKBONE = "test_resnet"


def save_weights(path: Path, name: str = TEST_BACKBONE) -> dict[str, torch.Tensor]:
    """Save a pretrained state dict as the hub's would be (3 channels, 1000 classes)."""
    torch.manual_seed(0)
    weights = timm.create_model(name).state_dict()
    if path.suffix == ".safetensors":
        save_file(weights, path)
    else:
        torch.save(weights, path)
    return weights


def pretrained_flags(path: Path) -> list[str]:
    """Flags of a backbone pretrained from a weights file, saved at ``path`` (no hub)."""
    save_weights(path)
    return [
        f"--model.net.init_args.name={TEST_BACKBONE}",
        "--model.net.init_args.pretrained=true",
        f"--model.net.init_args.weights_file={path}",
    ]
{%- endif %}


def as_flags(section: str, values: dict[str, Any]) -> list[str]:
    """Flags that set these values of a config section, e.g. ``--data.batch_size=32``."""
    return [
        f"--{section}.{name}={value if isinstance(value, str) else json.dumps(value)}"
        for name, value in values.items()
    ]


def callbacks_flag(*callbacks: dict[str, Any]) -> str:
    # Appended to the config's own callbacks, which keep running.
    return f"--trainer.callbacks+={json.dumps(list(callbacks))}"


def quick_fit(data_flags: list[str]) -> Fit:
    def fit_in(workdir: Path, *extra: str, callbacks: list[pl.Callback] = ()) -> TrainCLI:
        with pytest.MonkeyPatch.context() as patch:
            patch.chdir(workdir)
            return train([*data_flags, *QUICK_FIT, *extra], callbacks)

    return fit_in


@dataclass
class Run:
    """A finished fit and the folder it ran in."""

    cli: TrainCLI
    workdir: Path

    @property
    def best(self) -> Path:
        return self.workdir / self.cli.config_init["checkpoint"].best_model_path

    @property
    def log_dir(self) -> Path:
        return self.workdir / (self.cli.trainer.log_dir or self.cli.trainer.default_root_dir)


def command(module: str, *args: str) -> list[str]:
    """A command of this package, run by this Python: ``command("train", ...)``."""
    return [sys.executable, "-m", f"{PACKAGE}.{module}", *args]


def exit_message(main: Callable[[list[str]], None], argv: list[str]) -> str:
    """Run an entry point's ``main``; return what it exited with, checked to be one line."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    message = str(exit_info.value.code)
    assert "\n" not in message, message
    return message


def read_rows(path: Path) -> list[dict[str, str]]:
    """The rows of a CSV file with a header, as dicts."""
    with path.open(newline="") as file:
        return list(csv.DictReader(file))


def free_port() -> int:
    """A TCP port of the loopback interface that is free now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run(
    args: list[str], cwd: Path, env: dict[str, str], **options: Any
) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, **options)


@contextlib.contextmanager
def mounted_tmpfs(folder: Path, size: int) -> Iterator[Path]:
    """A file system of its own at ``folder``, ``size`` bytes large (root only: skips elsewhere)."""
    folder.mkdir(parents=True, exist_ok=True)
    mount = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)]
    if os.geteuid() != 0 or subprocess.run(mount, capture_output=True).returncode != 0:
        pytest.skip("needs root and permission to mount a tmpfs (a file system of its own)")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "--lazy", str(folder)], check=True)


class SlowCheckpointWrites(pl.Callback):
    """Write the ``nth`` checkpoint named ``name`` slowly: half, a marker line, a minute's pause,
    then the rest, so that a test can kill the process in the middle of the write."""

    def __init__(self, name: str, nth: int) -> None:
        self.name, self.nth, self.seen = name, nth, 0

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        save = torch.save

        def slow_save(checkpoint: Any, file: Any, *args: Any, **kwargs: Any) -> None:
            if not Path(getattr(file, "name", "")).name.startswith(f".{self.name}."):
                return save(checkpoint, file, *args, **kwargs)
            self.seen += 1
            if self.seen != self.nth:
                return save(checkpoint, file, *args, **kwargs)
            buffer = io.BytesIO()
            save(checkpoint, buffer, *args, **kwargs)
            data = buffer.getvalue()
            file.write(data[: len(data) // 2])
            file.flush()
            print("checkpoint half written", flush=True)
            time.sleep(60)
            file.write(data[len(data) // 2 :])

        torch.save = slow_save


class PauseForSignal(pl.Callback):
    """At one batch of one stage, print a marker and wait until the trainer receives SIGTERM.

    ``stage`` is "train", "validate" (not the sanity check) or "test"; ``epoch`` counts from 0.
    """

    def __init__(self, epoch: int, batch: int, stage: str = "train") -> None:
        self.epoch = epoch
        self.batch = batch
        self.stage = stage

    def _pause_at(self, trainer: pl.Trainer, stage: str, batch_idx: int) -> None:
        if (stage, trainer.current_epoch, batch_idx) == (self.stage, self.epoch, self.batch):
            print("waiting for SIGTERM", flush=True)
            deadline = time.monotonic() + 60
            while not trainer.received_sigterm and time.monotonic() < deadline:
                time.sleep(0.01)

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        self._pause_at(trainer, "train", args[-1])

    def on_validation_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if not trainer.sanity_checking:
            self._pause_at(trainer, "validate", args[3])

    def on_test_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        self._pause_at(trainer, "test", args[3])


class SigtermAtStep(pl.Callback):
    """Send this process SIGTERM, as a scheduler would, when the fit reaches one global step:
    in that training batch ("train"), or in the first batch of the validation that follows it
    ("validate")."""

    def __init__(self, step: int, stage: str = "train") -> None:
        self.step, self.stage = step, stage

    def _stop_at(self, trainer: pl.Trainer, stage: str) -> None:
        if (stage, trainer.global_step) == (self.stage, self.step):
            os.kill(os.getpid(), signal.SIGTERM)

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        self._stop_at(trainer, "train")

    def on_validation_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if not trainer.sanity_checking and args[3] == 0:
            self._stop_at(trainer, "validate")


class TimeUpAtStep(Timer):
    """Lightning's timer of ``--trainer.max_time``, its time up when the fit reaches a step."""

    def __init__(self, step: int) -> None:
        super().__init__(duration=timedelta(days=1))
        self.step, self.now = step, 0

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        self.now = trainer.global_step
        super().on_train_batch_end(trainer, *args)

    def time_elapsed(self, *args: Any) -> float:
        return timedelta(days=1).total_seconds() if self.now >= self.step else 0.0


class LastCheckpointSteps(pl.Callback):
    """Keep the global step that ``last.ckpt`` holds as each training batch starts."""

    def __init__(self) -> None:
        self.steps: dict[int, int | None] = {}

    def on_train_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        [path] = list(Path(trainer.default_root_dir).rglob("last.ckpt")) or [None]
        step = path and torch.load(path, map_location="cpu", weights_only=True)["global_step"]
        self.steps[trainer.global_step] = step


class EpochMetrics(pl.Callback):
    """Keep the metrics of every validation epoch."""

    def __init__(self) -> None:
        self.history: list[dict[str, float]] = []

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            metrics = trainer.callback_metrics.items()
            self.history.append({name: float(value) for name, value in metrics})


class StepValues(pl.Callback):
    """Keep the training loss and the learning rate of every step, by global step."""

    def __init__(self) -> None:
        self.values: dict[int, tuple[float, float]] = {}

    def on_train_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        self.lr = trainer.optimizers[0].param_groups[0]["lr"]

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: Any, outputs: dict, *args: Any
    ) -> None:
        # The batch's optimizer step is done: it was step global_step - 1.
        self.values[trainer.global_step - 1] = (float(outputs["loss"]), self.lr)


class PoisonWeights(pl.Callback):
    """Turn every weight into NaN at one global step, as a diverging fit would."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any
    ) -> None:
        if trainer.global_step == self.step:
            for parameter in pl_module.parameters():
                parameter.data.fill_(math.nan)


class FailAtTrainStart(pl.Callback):
    """Raise as training starts, as a bug in a user's code would."""

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        raise RuntimeError("failing on purpose")


def write_png(image: torch.Tensor, path: Path) -> Path:
    """Save uint8 pixels (channels, height, width) of one or three channels as a PNG file."""
    pixels = image.permute(1, 2, 0).numpy()
    Image.fromarray(pixels[..., 0] if pixels.shape[2] == 1 else pixels).save(path, "PNG")
    return path


def decoded_size(path: Path) -> tuple[int, int]:
    """Height and width of an image file, once it has been decoded whole."""
    with Image.open(path) as picture:
        picture.load()
        return picture.height, picture.width
