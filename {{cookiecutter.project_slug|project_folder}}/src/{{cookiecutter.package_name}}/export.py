"""Export entry point: a checkpoint to ONNX or TorchScript for serving without Lightning.

The exported model takes images as float pixel values on the 0-255 scale, of the shape the
model was trained on, (N, channels, height, width) from the checkpoint, normalizes them
itself, and returns one logit per class (class names: the checkpoint's ``class_names``).
"""

import argparse
import sys
from pathlib import Path

import torch

from .checkpoints import load_classifier
from .errors import ConfigError, UserError

FORMATS = ("onnx", "torchscript")


def export(ckpt_path: Path, export_format: str, output: Path) -> Path:
    """Write the checkpoint's model to ``output`` in ``export_format``; return ``output``."""
    model = load_classifier(ckpt_path).eval()
    example = torch.rand(2, *model.input_shape) * 255
    if output.is_dir():
        raise ConfigError(f"--output {output} is a folder: give a file name in it")
    output.parent.mkdir(parents=True, exist_ok=True)
    if export_format == "onnx":
        model.to_onnx(
            output,
            example,
            input_names=["images"],
            output_names=["logits"],
            dynamic_shapes={"images": {0: torch.export.Dim("batch")}},
            # One self-contained file: the weights inside, not in a separate .data file.
            external_data=False,
        )
    else:
        model.to_torchscript(output, method="trace", example_inputs=example)
    return output


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ckpt_path", type=Path, required=True, help="checkpoint from training")
    parser.add_argument("--format", choices=FORMATS, required=True)
    parser.add_argument("--output", type=Path, required=True, help="e.g. model.onnx or model.pt")
    args = parser.parse_args(argv)
    try:
        output = export(args.ckpt_path, args.format, args.output)
    except UserError as error:
        sys.exit(f"error: {error}")
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
