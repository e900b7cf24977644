import inspect
from pathlib import Path

import pytest
import yaml

from {{ cookiecutter.package_name }} import nets
from {{ cookiecutter.package_name }}.data import ImageDataModule
from {{ cookiecutter.package_name }}.train import train

DEFAULT_CONFIG = Path(__file__).parents[1] / "configs" / "default.yaml"
# Chosen by the file (the template's prompts); the code has generic defaults for these.
CHOSEN_IN_THE_FILE = (("model", "net"), ("trainer", "logger"))


def printed_config(capsys: pytest.CaptureFixture[str], args: list[str]) -> dict:
    with pytest.raises(SystemExit) as exit_info:
        train([*args, "--print_config"])
    assert exit_info.value.code == 0
    config = yaml.safe_load(capsys.readouterr().out)
    for section, key in CHOSEN_IN_THE_FILE:
        config[section].pop(key)
    return config


def test_default_yaml_states_the_code_defaults(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # The data: section is compared in the next test, as it must follow data.py.
    config = yaml.safe_load(DEFAULT_CONFIG.read_text())
    config.pop("data")
    without_data = tmp_path / "config.yaml"
    without_data.write_text(yaml.safe_dump(config))
    from_code = printed_config(capsys, [])
    from_file = printed_config(capsys, ["--config", str(without_data)])
    assert from_code["trainer"]["max_epochs"] == {{ 30 if cookiecutter.dataset == "image_folder" else 3 }}
    assert from_file == from_code


def test_default_yaml_data_section_states_the_data_module_defaults() -> None:
    section = yaml.safe_load(DEFAULT_CONFIG.read_text())["data"]
    parameters = inspect.signature(ImageDataModule).parameters
    if not set(section) <= set(parameters):
        pytest.skip("the data: section of configs/default.yaml is for another data module")
    # Chosen by the file: the code has no augmentation by default (see data.py).
    section.pop("augment", None)
    # YAML has lists where Python defaults have tuples.
    defaults = {
        name: list(parameter.default) if isinstance(parameter.default, tuple) else parameter.default
        for name, parameter in parameters.items()
    }
    assert section == {name: defaults[name] for name in section}


def test_default_yaml_chooses_a_network_and_logger() -> None:
    config = yaml.safe_load(DEFAULT_CONFIG.read_text())
    assert config["model"]["net"]["class_path"].startswith(f"{nets.__name__}.")
    assert "logger" in config["trainer"]


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
