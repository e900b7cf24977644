"""Every export format runs without this project's code, matches the checkpoint on the inputs
the README's Export section says it takes, and refuses the others in its own runtime."""

import hashlib
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from helpers import Run, command, exit_message, run

from {{ cookiecutter.package_name }}.inference.classifier import load_classifier
from {{ cookiecutter.package_name }}.inference.export import export, main

Runner = Callable[[torch.Tensor], torch.Tensor]


def onnx_runner(path: Path) -> Runner:
    onnxruntime = pytest.importorskip("onnxruntime", reason='pip install -e ".[export]"')
    session = onnxruntime.InferenceSession(str(path))
    return lambda images: torch.from_numpy(session.run(None, {"images": images.numpy()})[0])


def program_runner(path: Path) -> Runner:
    return torch.export.load(str(path)).module()


def aoti_runner(path: Path) -> Runner:
    return torch._inductor.aoti_load_package(str(path))


@dataclass(frozen=True)
class Format:
    """How a test runs a format, and what the README says it does beyond float32 images of the
    checkpoint's shape and any batch size from 1."""

    load: Callable[[Path], Runner]
    any_layout: bool  # reads channels-last and other strides; else only a contiguous tensor's
    answers_empty_batch: bool  # a batch of 0 gets no logits; else it is refused
    refusal: str  # how the runtime's input check words a refusal (regular expression)


FORMATS = {
    "onnx": Format(onnx_runner, True, True, "INVALID_ARGUMENT"),
    "pt2": Format(program_runner, True, True, "Guard failed|dtype mismatch"),
    "aoti": Format(aoti_runner, False, False, r"input_handles\[0\]"),
}


@pytest.fixture(scope="module")
def real_images(trained: Run) -> torch.Tensor:
    """Images of the test split as the exported models take them: floats on the 0-255 scale."""
    datamodule = trained.cli.datamodule
    datamodule.setup("test")
    return next(iter(datamodule.test_dataloader()))[0][:7].float()


@pytest.fixture(scope="module")
def checkpoint_model(trained: Run) -> torch.nn.Module:
    return load_classifier(trained.best)[0]


@pytest.fixture(
    scope="module", params=["onnx", "pt2", pytest.param("aoti", marks=pytest.mark.slow)]
)
def exported(
    request: pytest.FixtureRequest, trained: Run, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Format, Runner]:
    """Each format exported once, and loaded as the README shows, for every input below."""
    folder = tmp_path_factory.mktemp(request.param)
    output = export(trained.best, request.param, folder / f"model.{request.param}")
    assert [path.name for path in folder.iterdir()] == [output.name], "one file, whole"
    export_format = FORMATS[request.param]
    return export_format, export_format.load(output)


def assert_matches_the_checkpoint(
    runner: Runner, checkpoint_model: torch.nn.Module, images: torch.Tensor
) -> None:
    with torch.no_grad():
        logits, expected = runner(images), checkpoint_model(images)
    assert logits.shape == expected.shape
    assert torch.allclose(logits, expected, atol=1e-4)


@pytest.mark.parametrize("batch_size", [1, 7, 16, 1000])
def test_exported_model_matches_the_checkpoint_for_any_batch(
    batch_size: int,
    exported: tuple[Format, Runner],
    checkpoint_model: torch.nn.Module,
    real_images: torch.Tensor,
) -> None:
    # 16: the first batch that CPU convolutions run with other kernels.
    images = real_images[torch.arange(batch_size) % len(real_images)]
    assert_matches_the_checkpoint(exported[1], checkpoint_model, images)


def test_other_memory_layouts_are_read_right_or_refused(
    exported: tuple[Format, Runner], checkpoint_model: torch.nn.Module, real_images: torch.Tensor
) -> None:
    export_format, runner = exported
    for images in (real_images.to(memory_format=torch.channels_last), real_images[::2]):
        if export_format.any_layout:
            assert_matches_the_checkpoint(runner, checkpoint_model, images)
        else:
            with pytest.raises(RuntimeError, match="unmatched stride"):
                runner(images)
            # As the README says; .contiguous() keeps a grayscale channels-last tensor's strides.
            images = images.clone(memory_format=torch.contiguous_format)
            assert_matches_the_checkpoint(runner, checkpoint_model, images)


def other_channels(images: torch.Tensor) -> torch.Tensor:
    """RGB images for a grayscale model, grayscale ones for any other."""
    return images[:, :1].repeat(1, 3, 1, 1) if images.shape[1] == 1 else images[:, :1]


WRONG_INPUTS = {
    "uint8": lambda images: images.to(torch.uint8),
    "float64": lambda images: images.double(),
    "float16": lambda images: images.half(),
    "other channels": other_channels,
    "a row more": lambda images: torch.cat([images, images[:, :, :1]], dim=2),
    "a column fewer": lambda images: images[..., :-1].contiguous(),
    "8x8 images": lambda images: torch.zeros(7, images.shape[1], 8, 8),
    "1000 8x8 images": lambda images: torch.zeros(1000, images.shape[1], 8, 8),
    "no batch dimension": lambda images: images[0],
}


@pytest.mark.parametrize("case", WRONG_INPUTS)
def test_inputs_of_another_dtype_or_shape_are_refused_by_the_runtime(
    case: str, exported: tuple[Format, Runner], real_images: torch.Tensor
) -> None:
    export_format, runner = exported
    with pytest.raises(Exception, match=export_format.refusal):
        runner(WRONG_INPUTS[case](real_images))


def test_an_empty_batch_gets_no_logits_or_is_refused(
    exported: tuple[Format, Runner], checkpoint_model: torch.nn.Module, real_images: torch.Tensor
) -> None:
    export_format, runner = exported
    if export_format.answers_empty_batch:
        assert_matches_the_checkpoint(runner, checkpoint_model, real_images[:0])
    else:
        with pytest.raises(RuntimeError, match="dim value is too small"):
            runner(real_images[:0])


def test_exporting_over_the_checkpoint_is_refused_and_changes_nothing(
    trained: Run, tmp_path: Path
) -> None:
    checkpoint = Path(shutil.copy(trained.best, tmp_path / "model.ckpt"))
    os.link(checkpoint, tmp_path / "hard-link.ckpt")
    (tmp_path / "link.ckpt").symlink_to(checkpoint)
    (tmp_path / "linked-folder").symlink_to(tmp_path)
    digest = hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    files = sorted(tmp_path.iterdir())
    for output in (
        checkpoint,
        tmp_path / "hard-link.ckpt",
        tmp_path / "link.ckpt",
        tmp_path / "linked-folder" / "model.ckpt",
        tmp_path / ".." / tmp_path.name / "model.ckpt",
    ):
        args = ["--ckpt_path", str(checkpoint), "--format", "pt2", "--output", str(output)]
        assert exit_message(main, args) == (
            f"error: --output {output} is the checkpoint being exported: choose another output path"
        )
    assert hashlib.sha256(checkpoint.read_bytes()).hexdigest() == digest
    assert sorted(tmp_path.iterdir()) == files


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
