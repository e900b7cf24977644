"""What an operator meets: hostile checkpoints, bad values, resuming by name, and the
files the commands write. Every refusal is one line and starts nothing."""

import functools
import http.server
import json
import pathlib
import sys
import threading
from pathlib import Path

import onnx
import pytest
import torch
from conftest import QUICK_FIT, Fit

from {{ cookiecutter.package_name }} import export, predict, train
from {{ cookiecutter.package_name }}.checkpoints import load_classifier


class Payload:
    """Pickles into a call that creates a file: proof of code run by loading."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return pathlib.Path.touch, (self.marker,)


@pytest.fixture(scope="module")
def trained(fit: Fit, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run folder of a short fit without a logger: checkpoints under logs/checkpoints."""
    workdir = tmp_path_factory.mktemp("run")
    fit(workdir, "--trainer.logger=false", "--trainer.max_epochs=1")
    return workdir


def exit_message(main, argv: list[str], monkeypatch: pytest.MonkeyPatch) -> str:
    """Run an entry point's ``main`` with ``argv``; return what it exited with."""
    monkeypatch.setattr(sys, "argv", ["prog", *argv])
    with pytest.raises(SystemExit) as exit_info:
        main() if main is train.main else main(argv)
    message = str(exit_info.value.code)
    assert "\n" not in message, message
    return message


@pytest.fixture
def crafted(tmp_path: Path) -> tuple[Path, Path]:
    """A checkpoint whose unpickling would create ``marker``."""
    marker = tmp_path / "code-ran"
    path = tmp_path / "crafted.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {}, "payload": Payload(marker)}, path)
    return path, marker


def test_no_command_runs_code_from_a_checkpoint(
    crafted: tuple[Path, Path],
    data_flags: list[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path, marker = crafted
    # The switch that turns torch's default back to full unpickling must not matter.
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    monkeypatch.chdir(tmp_path)
    expected = f"error: {path} is not a PyTorch checkpoint holding only tensors and plain values"
    assert (
        exit_message(train.main, [*data_flags, *QUICK_FIT, f"--ckpt_path={path}"], monkeypatch)
        == expected
    )
    assert exit_message(predict.main, [f"--ckpt_path={path}"], monkeypatch) == expected
    command = [f"--ckpt_path={path}", "--format=onnx", f"--output={tmp_path / 'm.onnx'}"]
    assert exit_message(export.main, command, monkeypatch) == expected

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/{path.name}"
        message = exit_message(
            train.main, [*data_flags, *QUICK_FIT, f"--ckpt_path={url}"], monkeypatch
        )
    finally:
        server.shutdown()
    assert message == f"error: {url} is not a local file: download the checkpoint first"
    assert not marker.exists(), "loading the checkpoint ran its payload"
    assert not list(tmp_path.glob("logs/**/*.ckpt"))


@pytest.mark.parametrize(
    ("flag", "message"),
    [
        ("--model.lr=-0.1", "--model.lr must be above 0"),
        ("--model.lr=0", "--model.lr must be above 0"),
        ("--model.weight_decay=-1", "--model.weight_decay at least 0"),
        ("--ckpt_path=missing.ckpt", "checkpoint missing.ckpt does not exist"),
        ("--ckpt_path=last", "no last.ckpt under logs to resume"),
    ],
)
def test_bad_values_are_one_line_errors(
    flag: str, message: str, data_flags: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert message in exit_message(train.main, [*data_flags, *QUICK_FIT, flag], monkeypatch)
    assert not list(tmp_path.rglob("*.ckpt"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_asking_for_a_missing_gpu_is_a_one_line_error(
    data_flags: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    argv = [*data_flags, *QUICK_FIT, "--trainer.accelerator=gpu"]
    assert exit_message(train.main, argv, monkeypatch).startswith("error: ")


def test_resuming_with_another_network_or_schedule_is_refused(
    trained: Path, data_flags: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(trained)
    resume = [*data_flags, *QUICK_FIT, "--trainer.logger=false", "--trainer.max_epochs=1"]
    message = exit_message(
        train.main, [*resume, "--ckpt_path=last", "--model.net.width=8"], monkeypatch
    )
    assert message.startswith("error: the checkpoint was trained with net")
    message = exit_message(
        train.main, [*resume, "--ckpt_path=last", "--trainer.max_epochs=4"], monkeypatch
    )
    assert "learning-rate schedule spans" in message


def test_default_root_dir_moves_logs_and_checkpoints(fit: Fit, tmp_path: Path) -> None:
    csv_logger = {
        "class_path": "pytorch_lightning.loggers.CSVLogger",
        "init_args": {"save_dir": "logs"},
    }
    fit(
        tmp_path,
        "--trainer.max_epochs=1",
        "--trainer.default_root_dir=elsewhere",
        f"--trainer.logger={json.dumps(csv_logger)}",
    )
    assert list(tmp_path.glob("elsewhere/**/metrics.csv"))
    assert list(tmp_path.glob("elsewhere/**/last.ckpt"))
    assert not (tmp_path / "logs").exists()


def test_onnx_export_is_one_self_contained_file(trained: Path, tmp_path: Path) -> None:
    [best] = [path for path in trained.glob("logs/checkpoints/*.ckpt") if path.name != "last.ckpt"]
    output = export.export(best, "onnx", tmp_path / "out" / "model.onnx")
    assert sorted(path.name for path in output.parent.iterdir()) == ["model.onnx"]
    moved = output.rename(tmp_path / "alone.onnx")
    onnx.checker.check_model(onnx.load(str(moved)))


def test_output_folder_is_refused_and_nothing_is_left(
    trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    [best] = [path for path in trained.glob("logs/checkpoints/*.ckpt") if path.name != "last.ckpt"]
    folder = tmp_path / "out"
    folder.mkdir()
    message = exit_message(predict.main, [f"--ckpt_path={best}", f"--output={folder}"], monkeypatch)
    assert message == f"error: --output {folder} is a folder: give a file name in it"
    assert list(folder.iterdir()) == [] and not list(tmp_path.glob("*.partial"))
    model = load_classifier(best)
    assert model.hparams.class_names
