"""Export: a checkpoint to a model file that runs without this project's code.

- ``onnx``: an ONNX model (torch's default exporter, from a ``torch.export`` graph), for
  onnxruntime and the other ONNX runtimes;
- ``pt2``: a ``torch.export`` program, for ``torch.export.load`` in any Python with torch;
- ``aoti``: an AOTInductor package, compiled ahead of time for this machine's CPU, or its GPU
  where there is one, for ``torch._inductor.aoti_load_package`` (or C++, without Python).

Every format takes float32 pixel values on the 0-255 scale, shaped (N, channels, height, width)
as in the checkpoint with any N from 1, normalizes them itself, and returns one logit per class
(class names: the checkpoint's ``class_names``). Anything else is refused by the format's own
runtime; the README's Export section says format by format what that covers. There is no
TorchScript format: PyTorch deprecates it in favour of these.
"""

import argparse
import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any
from unittest import mock

import torch
from torch import nn

from ..support.errors import exit_in_one_line, require
from ..support.files import check_output, replaced
from ..support.process import configure_process
from .classifier import load_classifier

# What the code AOTInductor generates reads to decide whether to check its inputs.
AOTI_CHECKS_SWITCH = 'getenv("AOTI_RUNTIME_CHECK_INPUTS")'


def example_and_shapes(model: nn.Module, device: str = "cpu") -> tuple[tuple, dict]:
    """An example batch of the checkpoint's shape, and its batch dimension: any size from 1.

    A named Dim's range starts at its ``min``; ``Dim.DYNAMIC`` and ``Dim.AUTO`` start at 2,
    since export assumes that a dynamic size is never 0 or 1.
    """
    example = torch.rand(2, *model.input_shape, device=device) * 255
    return (example,), {"images": {0: torch.export.Dim("batch", min=1)}}


@contextlib.contextmanager
def batch_size_oblivious() -> Iterator[None]:
    """Trace and compile for every batch size from 1, not only for those like the example's.

    Export and Inductor otherwise take a dynamic size to be at least 2 (lifted by
    ``backed_size_oblivious``, torch/fx/experimental/_config.py), and on CPU, torch's
    convolution picks oneDNN or NNPACK kernels and their layout by batch size (1; 16 and more):
    compiled through that choice, the package refuses batches of 1 and from 16 on
    (pytorch/pytorch#118289). So both are off while compiling; the package still calls torch's
    convolution, which picks its kernel when it runs, and checks the strides it returns.
    """
    # Not torch.backends.mkldnn.flags(): it also sets TF32, which warns on machines without it.
    mkldnn = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    try:
        with (
            torch.fx.experimental._config.patch(backed_size_oblivious=True),
            torch.backends.nnpack.flags(enabled=False),
        ):
            yield
    finally:
        torch.backends.mkldnn.enabled = mkldnn


@contextlib.contextmanager
def aoti_input_checks_always_on() -> Iterator[None]:
    """Compile AOTInductor's checks of the inputs into the package switched on.

    AOTInductor generates checks of every input's dtype, sizes, strides and device, but runs
    them only where the AOTI_RUNTIME_CHECK_INPUTS environment variable is set when the package
    runs, and no compile option turns them on (``generate_input_output_runtime_checks`` in
    torch/_inductor/codegen/cpp_wrapper_cpu.py). Without them a wrong input is read as if it
    were right: NaN or wrong logits, reads past its end (pytorch/pytorch#141115).
    """
    from torch._inductor.codecache import AotCodeCompiler

    compile_code = AotCodeCompiler.compile

    def compile_checked(graph: Any, wrapper_code: str, *args: Any, **kwargs: Any) -> Any:
        if AOTI_CHECKS_SWITCH not in wrapper_code:
            raise RuntimeError(f"AOTInductor's code no longer reads {AOTI_CHECKS_SWITCH}")
        checks_on = wrapper_code.replace(AOTI_CHECKS_SWITCH, '"1"')
        return compile_code(graph, checks_on, *args, **kwargs)

    with mock.patch.object(AotCodeCompiler, "compile", compile_checked):
        yield


def to_onnx(model: nn.Module, file: IO[bytes]) -> None:
    for module in ("onnx", "onnxscript"):
        require(module, extra="export", feature="the onnx format")
    example, shapes = example_and_shapes(model)
    program = torch.onnx.export(
        model,
        example,
        input_names=["images"],
        output_names=["logits"],
        dynamic_shapes=shapes,
        # One self-contained file: the weights inside, not in a separate .data file.
        external_data=False,
        verbose=False,
    )
    program.save(file)


def to_program(model: nn.Module, file: IO[bytes]) -> None:
    example, shapes = example_and_shapes(model)
    torch.export.save(torch.export.export(model, example, dynamic_shapes=shapes), file)


def to_aoti(model: nn.Module, file: IO[bytes]) -> None:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    example, shapes = example_and_shapes(model.to(device), device)
    program = torch.export.export(model, example, dynamic_shapes=shapes)
    with aoti_input_checks_always_on():
        torch._inductor.aoti_compile_and_package(program, package_path=file)


FORMATS = {"onnx": to_onnx, "pt2": to_program, "aoti": to_aoti}


def export(ckpt_path: Path, export_format: str, output: Path) -> Path:
    """Write the checkpoint's model to ``output`` in ``export_format``; return ``output``."""
    check_output(output, inputs={"the checkpoint being exported": [ckpt_path]})
    model, _ = load_classifier(ckpt_path)
    # Channels-last weights speed up training; saved programs want plain contiguous tensors.
    model = model.to(memory_format=torch.contiguous_format)
    with replaced(output) as file, batch_size_oblivious():  # written whole, or not at all
        FORMATS[export_format](model, file)
    return output


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ckpt_path", type=Path, required=True, help="checkpoint from training")
    parser.add_argument("--format", choices=FORMATS, required=True)
    parser.add_argument(
        "--output", type=Path, required=True, help="e.g. model.onnx, model.pt2 or model_aoti.pt2"
    )
    args = parser.parse_args(argv)
    configure_process()
    with exit_in_one_line():
        output = export(args.ckpt_path, args.format, args.output)
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
