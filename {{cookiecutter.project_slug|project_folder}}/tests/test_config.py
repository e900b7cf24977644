"""One source of defaults, the packaged configs/default.yaml, and what a config changes."""

import inspect
import re
import sys
from pathlib import Path

import pytest
import yaml
from helpers import PROJECT, Fit, run
from torch.optim import SGD
from torch.optim.lr_scheduler import CosineAnnealingLR

from {{ cookiecutter.package_name }}.data import ImageDataModule
from {{ cookiecutter.package_name }}.train import DEFAULT_CONFIG, resolve, train

# Where each logger of the config keeps a file that proves it recorded a run.
LOGGER_FILES = {
    "TensorBoardLogger": "logs/*/version_0/events.out.tfevents.*",
    "CSVLogger": "logs/*/version_0/metrics.csv",
    "WandbLogger": "logs/wandb/offline-run-*",
    "MLFlowLogger": "logs/mlruns/*/*/metrics",
}


@pytest.mark.slow
def test_the_console_script_runs_the_packaged_config_without_config_flag(
    data_flags: list[str], tmp_path: Path, child_env: dict[str, str]
) -> None:
    # What the installed console script of pyproject.toml runs: the function it names.
    [module] = re.findall(r'-train = "([\w.]+):main"', (PROJECT / "pyproject.toml").read_text())
    script = f"import sys; from {module} import main; sys.argv[0] = 'train'; main()"
    flags = [*data_flags, "--trainer.max_epochs=1", "--trainer.devices=1"]
    env = {**child_env, "WANDB_MODE": "offline"}
    completed = run([sys.executable, "-c", script, *flags], tmp_path, env)
    assert completed.returncode == 0, completed.stderr[-2000:]
    logger = yaml.safe_load(DEFAULT_CONFIG.read_text())["trainer"]["logger"]
    if logger:
        pattern = LOGGER_FILES[logger["class_path"].rpartition(".")[2]]
        assert list(tmp_path.glob(pattern)), f"no {pattern}: the config's logger did not run"
    [config] = tmp_path.glob("logs/**/config.yaml")
    saved = yaml.safe_load(config.read_text())["trainer"]["logger"]
    assert (saved and saved["class_path"]) == (logger and logger["class_path"])


def test_the_default_config_is_read_whether_named_or_not(data_flags: list[str]) -> None:
    implicit = resolve(data_flags).config
    explicit = resolve(["--config", str(DEFAULT_CONFIG), *data_flags]).config
    implicit.pop("config", None)
    explicit.pop("config", None)
    assert implicit == explicit


def test_data_section_states_the_data_module_defaults() -> None:
    section = yaml.safe_load(DEFAULT_CONFIG.read_text())["data"]
    parameters = inspect.signature(ImageDataModule).parameters
    if not set(section) <= set(parameters):
        pytest.skip("the data: section of configs/default.yaml is for another data module")
    # An augmentation is the config's choice: a data module's signature defaults to none.
    section.pop("augment", None)
    defaults = {
        name: list(parameter.default) if isinstance(parameter.default, tuple) else parameter.default
        for name, parameter in parameters.items()
    }
    assert section == {name: defaults[name] for name in section}


def test_sgd_with_cosine_is_a_config_change(fit: Fit, tmp_path: Path) -> None:
    experiment = tmp_path / "sgd.yaml"
    experiment.write_text(
        yaml.safe_dump(
            {
                "model": {
                    "optimizer": {
                        "class_path": "torch.optim.SGD",
                        "init_args": {"lr": 0.05, "momentum": 0.9},
                    },
                    "scheduler": {"class_path": "torch.optim.lr_scheduler.CosineAnnealingLR"},
                }
            }
        )
    )
    cli = fit(tmp_path, f"--config={experiment}", "--trainer.max_epochs=2")
    trainer = cli.trainer
    [optimizer], [schedule] = trainer.optimizers, trainer.lr_scheduler_configs
    assert isinstance(optimizer, SGD) and optimizer.defaults["momentum"] == 0.9
    assert isinstance(schedule.scheduler, CosineAnnealingLR) and schedule.interval == "step"
    # Annealed over exactly the run: from 0.05 at the first step to 0 after the last.
    assert schedule.scheduler.T_max == trainer.global_step == trainer.estimated_stepping_batches
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0, abs=1e-9)
    assert cli.model.hparams["optimizer"]["class_path"] == "torch.optim.SGD"


def test_no_schedule_keeps_the_rate(fit: Fit, tmp_path: Path) -> None:
    cli = fit(tmp_path, "--model.scheduler=null", "--trainer.max_epochs=1")
    assert cli.trainer.lr_scheduler_configs == []
    lr = cli.config.model.optimizer.init_args.lr
    assert cli.trainer.optimizers[0].param_groups[0]["lr"] == lr


def test_the_best_checkpoint_is_named_after_the_monitored_metric(fit: Fit, tmp_path: Path) -> None:
    cli = fit(
        tmp_path, "--checkpoint.monitor=val/loss", "--checkpoint.mode=min", "--trainer.max_epochs=1"
    )
    name = Path(cli.config_init["checkpoint"].best_model_path).name
    assert name.startswith("epoch00-val_loss") and "val_acc" not in name


def test_wrong_type_is_refused_before_training(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        train(["--trainer.max_epochs=abc"])
    assert exit_info.value.code != 0
    assert "max_epochs" in capsys.readouterr().err


def test_unknown_key_is_refused_before_training(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        train(["--model.nope=1"])
    assert exit_info.value.code != 0
    assert "nope" in capsys.readouterr().err
