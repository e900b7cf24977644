"""Every export format runs without this project's code and matches the checkpoint."""

import sys
from pathlib import Path

import pytest
import torch
from helpers import Run, command, exit_message, run

from {{ cookiecutter.package_name }}.inference.classifier import load_classifier
from {{ cookiecutter.package_name }}.inference.export import export, main


@pytest.fixture(scope="module")
def real_images(trained: Run) -> torch.Tensor:
    """Images of the test split as the exported models take them: floats on the 0-255 scale."""
    datamodule = trained.cli.datamodule
    datamodule.setup("test")
    return next(iter(datamodule.test_dataloader()))[0][:7].float()


def expected_logits(checkpoint: Path, images: torch.Tensor) -> torch.Tensor:
    model, _ = load_classifier(checkpoint)
    with torch.no_grad():
        return model(images)


def run_onnx(path: Path, images: torch.Tensor) -> torch.Tensor:
    onnxruntime = pytest.importorskip("onnxruntime", reason='pip install -e ".[export]"')
    session = onnxruntime.InferenceSession(str(path))
    assert [tuple(input.shape[1:]) for input in session.get_inputs()] == [tuple(images.shape[1:])]
    return torch.from_numpy(session.run(None, {"images": images.numpy()})[0])


def run_program(path: Path, images: torch.Tensor) -> torch.Tensor:
    return torch.export.load(str(path)).module()(images)


def run_aoti(path: Path, images: torch.Tensor) -> torch.Tensor:
    return torch._inductor.aoti_load_package(str(path))(images)


RUNTIMES = {"onnx": run_onnx, "pt2": run_program, "aoti": run_aoti}


@pytest.mark.parametrize(
    "export_format", ["onnx", "pt2", pytest.param("aoti", marks=pytest.mark.slow)]
)
def test_exported_model_matches_the_checkpoint_for_any_batch(
    export_format: str, trained: Run, real_images: torch.Tensor, tmp_path: Path
) -> None:
    output = export(trained.best, export_format, tmp_path / f"model.{export_format}")
    assert sorted(path.name for path in tmp_path.iterdir()) == [output.name], "one file, whole"
    with torch.no_grad():
        for batch in (real_images, real_images[:1]):  # the batch dimension is dynamic
            logits = RUNTIMES[export_format](output, batch)
            assert torch.allclose(logits, expected_logits(trained.best, batch), atol=1e-4)


def test_missing_extra_is_named_in_one_line(
    trained: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As in a project installed without the export extra: onnxscript cannot be imported.
    monkeypatch.setitem(sys.modules, "onnxscript", None)
    output = tmp_path / "m.onnx"
    args = ["--ckpt_path", str(trained.best), "--format", "onnx", "--output", str(output)]
    assert exit_message(main, args) == (
        "error: the onnx format needs onnxscript, which is not installed: "
        'pip install -e ".[export]"'
    )
    assert not output.exists()


def test_output_that_is_not_a_regular_file_is_refused(trained: Run, tmp_path: Path) -> None:
    for output in (tmp_path, Path("/dev/null")):
        args = ["--ckpt_path", str(trained.best), "--format", "pt2", "--output", str(output)]
        message = exit_message(main, args)
        assert (
            message == f"error: {output} exists and is not a regular file: give another output path"
        )
    assert Path("/dev/null").is_char_device()


def test_the_command_line_writes_the_file(
    trained: Run, tmp_path: Path, child_env: dict[str, str]
) -> None:
    output = tmp_path / "deep" / "model.pt2"
    args = ["--ckpt_path", str(trained.best), "--format", "pt2", "--output", str(output)]
    completed = run(command("inference.export", *args), tmp_path, child_env)
    assert completed.returncode == 0 and f"wrote {output}" in completed.stdout
    assert "Warning" not in completed.stderr, completed.stderr
