"""What an operator meets: hostile checkpoints, bad values, resuming by name, and the files the
commands write. Every refusal is one line and changes nothing on disk."""

import functools
import hashlib
import http.server
import json
import os
import pathlib
import shutil
import threading
from pathlib import Path

import pytest
import torch
from helpers import QUICK_FIT, Fit, Run, exit_message, write_png

from {{ cookiecutter.package_name }} import nets, train
from {{ cookiecutter.package_name }}.inference import export, predict


class Payload:
    """Pickles into a call that creates a file: proof of code run by loading."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return pathlib.Path.touch, (self.marker,)


# Another network than the default's whichever the bake chose: another class or a narrower MLP.
NARROW_MLP = {"class_path": f"{nets.__name__}.MLP", "init_args": {"hidden_dim": 8}}


@pytest.fixture(scope="module")
def run_without_logger(fit: Fit, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder of a short fit without a logger: checkpoints under logs/checkpoints."""
    workdir = tmp_path_factory.mktemp("run")
    fit(workdir, "--trainer.logger=false", "--trainer.max_epochs=1")
    return workdir


def folder_state(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` with a digest of its content."""
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def test_no_command_runs_code_from_a_checkpoint(
    data_flags: list[str], workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker, path = workdir / "code-ran", workdir / "crafted.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {}, "payload": Payload(marker)}, path)
    # The switch that turns torch's default back to full unpickling must not matter.
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    expected = f"error: {path} is not a PyTorch checkpoint holding only tensors and plain values"
    fit = [*data_flags, *QUICK_FIT]
    assert exit_message(train.main, [*fit, f"--ckpt_path={path}"]) == expected
    assert exit_message(predict.main, [f"--ckpt_path={path}"]) == expected
    command = [f"--ckpt_path={path}", "--format=onnx", f"--output={workdir / 'm.onnx'}"]
    assert exit_message(export.main, command) == expected

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(workdir))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/{path.name}"
        message = exit_message(train.main, [*fit, f"--ckpt_path={url}"])
    finally:
        server.shutdown()
    assert message == f"error: {url} is not a local file: download the checkpoint first"
    assert not marker.exists(), "loading the checkpoint ran its payload"
    assert not list(workdir.glob("logs/**/*.ckpt"))


@pytest.mark.parametrize(
    ("flag", "message"),
    [
        ("--model.optimizer.lr=-0.1", "Invalid learning rate"),
        ("--model.optimizer.weight_decay=-1", "Invalid weight_decay"),
        ("--ckpt_path=missing.ckpt", "checkpoint missing.ckpt does not exist"),
        ("--ckpt_path=last", "has a last.ckpt to resume"),
    ],
)
def test_bad_values_are_one_line_errors(
    flag: str, message: str, data_flags: list[str], workdir: Path
) -> None:
    assert message in exit_message(train.main, [*data_flags, *QUICK_FIT, flag])
    assert not list(workdir.rglob("*.ckpt"))


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--trainer.max_epochs=0"], "--trainer.max_epochs 0 trains nothing"),
        (["--trainer.max_steps=0"], "--trainer.max_steps 0 trains nothing"),
        (["--trainer.max_time=00:00:00:00"], "--trainer.max_time 00:00:00:00 trains nothing"),
        (["--trainer.max_epochs=-1"], "set --trainer.max_epochs or --trainer.max_steps, or"),
    ],
)
def test_a_fit_without_length_or_end_is_refused_before_writing(
    flags: list[str], message: str, data_flags: list[str], workdir: Path
) -> None:
    assert message in exit_message(train.main, [*data_flags, *QUICK_FIT, *flags])
    assert not list(workdir.iterdir()), "nothing written, not even an empty run folder"


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_asking_for_a_missing_gpu_is_a_one_line_error(data_flags: list[str], workdir: Path) -> None:
    argv = [*data_flags, *QUICK_FIT, "--trainer.accelerator=gpu"]
    assert exit_message(train.main, argv).startswith("error: ")


@pytest.mark.parametrize(
    ("flag", "message"),
    [
        ("--model.net=" + json.dumps(NARROW_MLP), "the checkpoint was trained with net."),
        (
            "--model.optimizer=torch.optim.SGD",
            "the checkpoint was trained with optimizer.class_path torch.optim.AdamW, "
            "this run has torch.optim.SGD",
        ),
        (
            "--model.optimizer.lr=0.02",
            "the checkpoint was trained with optimizer.init_args.lr 0.01, this run has 0.02",
        ),
        ("--model.scheduler=null", "the checkpoint was trained with scheduler"),
        ("--trainer.max_epochs=4", "planned for trainer.max_epochs 1, this run has 4"),
        ("--data.batch_size=16", "planned for batches per epoch"),
    ],
)
def test_a_refused_resume_changes_nothing_in_the_run_folder(
    flag: str,
    message: str,
    run_without_logger: Path,
    data_flags: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(run_without_logger)
    before = folder_state(run_without_logger)
    resume = [*data_flags, *QUICK_FIT, "--trainer.logger=false", "--trainer.max_epochs=1"]
    said = exit_message(train.main, [*resume, "--ckpt_path=last", flag])
    assert message in said
    assert len(said) < 250, "names the setting that differs, not whole dicts of settings"
    assert folder_state(run_without_logger) == before


def test_default_root_dir_moves_logs_and_checkpoints(fit: Fit, tmp_path: Path) -> None:
    csv_logger = (
        '{"class_path": "pytorch_lightning.loggers.CSVLogger", "init_args": {"save_dir": "logs"}}'
    )
    fit(
        tmp_path,
        "--trainer.max_epochs=1",
        "--trainer.default_root_dir=elsewhere",
        f"--trainer.logger={csv_logger}",
    )
    assert list(tmp_path.glob("elsewhere/**/metrics.csv"))
    assert list(tmp_path.glob("elsewhere/**/last.ckpt"))
    assert not (tmp_path / "logs").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--batch_size", "0"], "argument --batch_size: invalid PositiveInt value: '0'"),
        (["--devices", "x"], "argument --devices: invalid PositiveInt value: 'x'"),
        (["--num_workers", "-1"], "argument --num_workers: invalid NonNegativeInt value: '-1'"),
    ],
)
def test_predict_refuses_bad_numbers_in_one_line(
    args: list[str], message: str, trained: Run, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        predict.main(["--ckpt_path", str(trained.best), *args])
    assert capsys.readouterr().err.strip().endswith(message)


def test_predict_refuses_an_output_it_does_not_own(trained: Run, tmp_path: Path) -> None:
    for output in (Path("/dev/full"), tmp_path):
        args = [f"--ckpt_path={trained.best}", f"--output={output}"]
        message = exit_message(predict.main, args)
        assert (
            message == f"error: {output} exists and is not a regular file: give another output path"
        )
    assert Path("/dev/full").is_char_device(), "the device is still a device"
    assert list(tmp_path.iterdir()) == []


def test_predict_refuses_an_output_that_is_one_of_its_inputs(trained: Run, tmp_path: Path) -> None:
    checkpoint = shutil.copy(trained.best, tmp_path / "model.ckpt")
    image = tmp_path / "images" / "digit.png"
    image.parent.mkdir()
    write_png(torch.zeros(1, 8, 8, dtype=torch.uint8), image)
    os.link(image, tmp_path / "hard-link.png")
    before = folder_state(tmp_path)
    for output, inputs, what in (
        (checkpoint, [], "the checkpoint"),
        (image, ["--input", str(image)], "one of the input images"),
        (tmp_path / "hard-link.png", ["--input", str(image.parent)], "one of the input images"),
    ):
        args = ["--ckpt_path", str(checkpoint), *inputs, "--output", str(output)]
        message = exit_message(predict.main, args)
        assert message == f"error: --output {output} is {what}: choose another output path"
    assert folder_state(tmp_path) == before


def test_predict_names_a_broken_input_in_one_line(trained: Run, tmp_path: Path) -> None:
    (tmp_path / "gone.png").symlink_to(tmp_path / "nowhere.png")
    output = tmp_path / "out.csv"
    message = exit_message(
        predict.main, [f"--ckpt_path={trained.best}", f"--input={tmp_path}", f"--output={output}"]
    )
    assert message == f"error: cannot read image {tmp_path / 'gone.png'}: No such file or directory"
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    (tmp_path / "gone.png").unlink()
    message = exit_message(
        predict.main, [f"--ckpt_path={trained.best}", f"--input={tmp_path}", f"--output={output}"]
    )
    assert message.startswith(f"error: cannot read image {tmp_path / 'broken.png'}: not an image")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["broken.png"], "files left behind"


def test_predict_needs_the_recorded_data_module_arguments(trained: Run, tmp_path: Path) -> None:
    checkpoint = torch.load(trained.best, map_location="cpu", weights_only=True)
    without = tmp_path / "without.ckpt"
    torch.save(
        {key: value for key, value in checkpoint.items() if key != "datamodule_hyper_parameters"},
        without,
    )
    message = exit_message(
        predict.main, [f"--ckpt_path={without}", f"--output={tmp_path / 'p.csv'}"]
    )
    assert "does not record its data module's arguments" in message and "give --input" in message
    other = tmp_path / "other.ckpt"
    torch.save({**checkpoint, "datamodule_hyper_parameters": {"no_such_argument": 1}}, other)
    message = exit_message(predict.main, [f"--ckpt_path={other}", f"--output={tmp_path / 'p.csv'}"])
    assert message.startswith("error: the checkpoint was trained on another data module")
    assert not (tmp_path / "p.csv").exists()
