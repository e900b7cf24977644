"""Export: a checkpoint to a model file that runs without this project's code.

- ``onnx``: an ONNX model (torch's default exporter, from a ``torch.export`` graph), for
  onnxruntime and the other ONNX runtimes;
- ``pt2``: a ``torch.export`` program, for ``torch.export.load`` in any Python with torch;
- ``aoti``: an AOTInductor package, compiled ahead of time for this machine's CPU, or its GPU
  where there is one, for ``torch._inductor.aoti_load_package`` (or C++, without Python).

Every format takes float pixel values on the 0-255 scale, of the shape the model was trained
on, (N, channels, height, width) with any N, normalizes them itself, and returns one logit per
class (class names: the checkpoint's ``class_names``). TorchScript is gone: PyTorch deprecates
it in favour of these.
"""

import argparse
from pathlib import Path
from typing import IO

import torch
from torch import nn

from ..support.errors import exit_in_one_line, require
from ..support.files import check_output, replaced
from ..support.process import configure_process
from .classifier import load_classifier


def example_and_shapes(model: nn.Module, device: str = "cpu") -> tuple[tuple, dict]:
    """An example batch of the checkpoint's shape, and its batch dimension declared dynamic."""
    example = torch.rand(2, *model.input_shape, device=device) * 255
    return (example,), {"images": {0: torch.export.Dim("batch")}}


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
    torch._inductor.aoti_compile_and_package(program, package_path=file)


FORMATS = {"onnx": to_onnx, "pt2": to_program, "aoti": to_aoti}


def export(ckpt_path: Path, export_format: str, output: Path) -> Path:
    """Write the checkpoint's model to ``output`` in ``export_format``; return ``output``."""
    check_output(output)
    model, _ = load_classifier(ckpt_path)
    # Channels-last weights speed up training; saved programs want plain contiguous tensors.
    model = model.to(memory_format=torch.contiguous_format)
    with replaced(output) as file:  # written whole, or not at all
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
