"""Serve entry point: a checkpoint behind an HTTP endpoint, on LitServe.

    python -m {{ cookiecutter.package_name }}.serve --ckpt_path CKPT
    curl -F image=@digit.png http://127.0.0.1:8000/predict

POST /predict takes one image file in the multipart form field ``image`` and answers, as JSON,
its class index, class name and confidence (softmax probability), and the ``--top_k`` most
likely classes. Images are decoded by ``images.decode``, as in ``predict``, so both give the
same answer for the same file. LitServe runs the model in worker processes, batches requests
that arrive together (``--max_batch_size``, ``--batch_timeout``) and serves GET /health (200
once the workers are ready) and GET /info (class names, input shape, checkpoint, template
version). Needs the ``serve`` extra: ``pip install -e ".[serve]"``.
"""

import argparse
import contextlib
import functools
import os
import signal
import sys
from pathlib import Path
from types import FrameType
from typing import Annotated, Any

import litserve as ls
import torch
from fastapi import File, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from torch import Tensor

from . import TEMPLATE_VERSION
from .checkpoints import load_classifier
from .errors import ImageError, UserError
from .hardware import default_precision, trainer_defaults
from .images import MAX_PIXELS, decode

FORM = "multipart/form-data"


class ImageUpload(BaseModel):
    """The form POST /predict takes: one image file (PNG, JPEG, ...) in the field ``image``."""

    image: UploadFile


class ClassScore(BaseModel):
    class_index: int
    class_name: str
    confidence: float


class Prediction(ClassScore):
    """The most likely class and its softmax probability, then the ``top_k`` most likely."""

    top_k: list[ClassScore]


class ImageClassifierAPI(ls.LitAPI):
    """Decodes uploaded images as ``predict`` does and classifies them, in batches."""

    def __init__(
        self,
        ckpt_path: Path,
        top_k: int,
        cpu_threads: int,
        max_batch_size: int,
        batch_timeout: float,
    ) -> None:
        super().__init__(max_batch_size=max_batch_size, batch_timeout=batch_timeout)
        self.ckpt_path = ckpt_path
        self.top_k = top_k
        self.cpu_threads = cpu_threads

    def setup(self, device: str) -> None:
        """Load the checkpoint in each worker process, onto its device."""
        self.model = load_classifier(self.ckpt_path).to(device).eval()
        self.class_names = list(self.model.hparams.class_names)
        self.channels = self.model.hparams.channels
        self.image_size = tuple(self.model.hparams.image_size)
        self.autocast = contextlib.nullcontext
        if device == "cpu":
            torch.set_num_threads(self.cpu_threads)
        elif device.startswith("cuda"):
            # Compute as `predict` does on this GPU: TF32 matmuls and mixed precision.
            trainer_defaults()
            dtype = torch.bfloat16 if default_precision() == "bf16-mixed" else torch.float16
            self.autocast = functools.partial(torch.autocast, "cuda", dtype=dtype)

    def decode_request(self, request: Annotated[ImageUpload, File()]) -> Tensor | ImageError:
        try:
            return decode(request.image.file.read(), self.channels, self.image_size)
        except ImageError as error:
            # Returned, not raised: when decode_request raises for one request of a batch,
            # LitServe answers every request of that batch with the error.
            return error

    def batch(self, inputs: list[Tensor | ImageError]) -> list[Tensor | ImageError]:
        return inputs  # stacked in predict, around the inputs that are errors

    @torch.inference_mode()
    def predict(self, inputs: Any) -> Any:
        """Classify one decoded image, or with batching a list of them; errors pass through."""
        batch = inputs if self.max_batch_size > 1 else [inputs]
        images = [item for item in batch if isinstance(item, Tensor)]
        predictions = iter(self.classify(torch.stack(images)) if images else [])
        outputs = [item if isinstance(item, ImageError) else next(predictions) for item in batch]
        return outputs if self.max_batch_size > 1 else outputs[0]

    def classify(self, images: Tensor) -> list[Prediction]:
        with self.autocast():
            logits = self.model(images.to(self.model.device))
        confidences, indices = logits.float().softmax(dim=1).topk(self.top_k, dim=1)
        predictions = []
        for row_confidences, row_indices in zip(
            confidences.tolist(), indices.tolist(), strict=True
        ):
            top_k = [
                ClassScore(class_index=index, class_name=self.class_names[index], confidence=p)
                for index, p in zip(row_indices, row_confidences, strict=True)
            ]
            predictions.append(Prediction(**top_k[0].model_dump(), top_k=top_k))
        return predictions

    def encode_response(self, output: Prediction | ImageError) -> Prediction:
        if isinstance(output, ImageError):
            # FastAPI sends a returned response as it is, past the Prediction schema.
            return JSONResponse({"detail": str(output)}, status_code=422)
        return output


async def request_error(request: Request, error: RequestValidationError) -> JSONResponse:
    """Answer a request that is not the expected form in one line (FastAPI's default answer
    is a list of errors that echoes the input back)."""
    content_type = request.headers.get("content-type")
    if not content_type or not content_type.startswith(FORM):
        sent = f"not as {content_type}" if content_type else "the request has no content type"
        detail = f"send the image as {FORM} in the field 'image' (curl -F image=@FILE): {sent}"
        return JSONResponse({"detail": detail}, status_code=415)
    first = error.errors()[0]
    field = ".".join(str(part) for part in first["loc"][1:])
    if first["type"] == "missing":
        detail = f"the form has no field {field!r}: send the image file in it"
    else:
        detail = f"the form field {field!r} must be a file (curl -F {field}=@FILE)"
    return JSONResponse({"detail": detail}, status_code=422)


def build_server(
    ckpt_path: Path,
    top_k: int,
    accelerator: str,
    devices: int | str,
    workers_per_device: int,
    max_batch_size: int,
    batch_timeout: float,
    max_payload_mb: float,
) -> ls.LitServer:
    """The server for a checkpoint; loading it here first stops a bad one with one line."""
    ckpt_path = ckpt_path.resolve()  # as /info shows it: unambiguous from any folder
    model = load_classifier(ckpt_path)
    class_names = list(model.hparams.class_names)
    # On CPU, the model workers and LitServe's HTTP processes (one per worker) share the cores
    # equally: with more torch threads they take cores from one another (on a busy 2-core
    # machine, torch's default of 2 threads made a one-image forward pass 100x slower than 1).
    cpu_threads = max(1, (os.cpu_count() or 1) // (2 * workers_per_device))
    api = ImageClassifierAPI(
        ckpt_path,
        min(top_k, len(class_names)),
        cpu_threads,
        max_batch_size,
        batch_timeout,
    )
    server = ls.LitServer(
        api,
        accelerator=accelerator,
        devices=devices,
        workers_per_device=workers_per_device,
        max_payload_size=int(max_payload_mb * 2**20),
        model_metadata={
            "class_names": class_names,
            "input_shape": list(model.input_shape),
            "checkpoint": str(ckpt_path),
            "template_version": TEMPLATE_VERSION,
            "max_pixels": MAX_PIXELS,
        },
    )
    server.app.add_exception_handler(RequestValidationError, request_error)
    return server


def stop_on_sigterm() -> None:
    """Make SIGTERM (docker stop, Kubernetes, a batch scheduler) stop the server as Ctrl-C does:
    LitServe then stops accepting connections, answers the requests in flight and ends its
    worker processes. Left to the default action, SIGTERM would end this process only and
    leave the others running."""
    server_pid = os.getpid()

    def stop(signum: int, frame: FrameType | None) -> None:
        if os.getpid() == server_pid:
            raise KeyboardInterrupt
        # A process LitServe forked, which inherited this handler: the default action.
        signal.signal(signum, signal.SIG_DFL)
        signal.raise_signal(signum)

    signal.signal(signal.SIGTERM, stop)


def devices_value(value: str) -> int | str:
    if value == "auto":
        return value
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"'auto' or a count of at least 1, not {value!r}")
    return int(value)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ckpt_path", type=Path, required=True, help="checkpoint from training")
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        choices=["127.0.0.1", "0.0.0.0", "::"],
        help="%(default)s: this machine only; 0.0.0.0 or '::': other machines too (containers)",
    )
    parser.add_argument("--port", type=int, default=8000, help="1024-65535 (%(default)s)")
    parser.add_argument("--accelerator", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    parser.add_argument(
        "--devices", type=devices_value, default="auto", help="'auto' or a count (%(default)s)"
    )
    parser.add_argument(
        "--workers_per_device",
        type=int,
        default=1,
        help="model copies, each a process, per device (%(default)s)",
    )
    parser.add_argument(
        "--max_batch_size",
        type=int,
        default=16,
        help="most requests per model call; 1: no batching (%(default)s)",
    )
    parser.add_argument(
        "--batch_timeout",
        type=float,
        default=0.005,
        help="seconds a batch may wait to fill up before the model runs on it (%(default)s)",
    )
    parser.add_argument(
        "--max_payload_mb",
        type=float,
        default=10,
        help="larger requests are refused with 413 (%(default)s)",
    )
    parser.add_argument(
        "--top_k", type=int, default=5, help="most likely classes to answer (%(default)s)"
    )
    args = parser.parse_args(argv)
    if not 1024 <= args.port <= 65535:
        parser.error(f"--port must be within 1024-65535, not {args.port}")
    for name in ("workers_per_device", "max_batch_size", "top_k"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1, not {getattr(args, name)}")
    # At a batch_timeout of 0, LitServe's batching loop polls its queue without pause: it takes
    # a whole core while idle.
    for name in ("batch_timeout", "max_payload_mb"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name} must be above 0, not {getattr(args, name)}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        server = build_server(
            args.ckpt_path,
            top_k=args.top_k,
            accelerator=args.accelerator,
            devices=args.devices,
            workers_per_device=args.workers_per_device,
            max_batch_size=args.max_batch_size,
            batch_timeout=args.batch_timeout,
            max_payload_mb=args.max_payload_mb,
        )
    except UserError as error:
        sys.exit(f"error: {error}")
    stop_on_sigterm()
    server.run(host=args.host, port=args.port, generate_client_file=False)


if __name__ == "__main__":
    main()
