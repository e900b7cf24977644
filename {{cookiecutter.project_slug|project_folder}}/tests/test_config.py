from pathlib import Path

import pytest

from {{ cookiecutter.package_name }}.train import train

DEFAULT_CONFIG = Path(__file__).parents[1] / "configs" / "default.yaml"


def printed_config(capsys: pytest.CaptureFixture[str], args: list[str]) -> str:
    with pytest.raises(SystemExit) as exit_info:
        train([*args, "--print_config"])
    assert exit_info.value.code == 0
    return capsys.readouterr().out


def test_default_yaml_states_the_code_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    from_code = printed_config(capsys, [])
    from_file = printed_config(capsys, ["--config", str(DEFAULT_CONFIG)])
    assert "max_epochs: 5" in from_code
    assert from_file == from_code


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
