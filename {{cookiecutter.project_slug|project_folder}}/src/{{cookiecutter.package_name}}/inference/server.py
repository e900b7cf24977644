"""The HTTP server of a checkpoint, on LitServe: the model's API, the page, the shutdown."""

import base64
import contextlib
import functools
import io
import os
import signal
import socket
import threading
from pathlib import Path
from typing import Annotated, Any

import litserve as ls
import torch
from fastapi import File, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from PIL import Image
from pydantic import BaseModel
from torch import Tensor
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .. import TEMPLATE_VERSION
from ..support.errors import ImageError, one_line
from ..support.process import default_precision
from .classifier import load_classifier
from .images import MAX_PIXELS, decode

FORM = "multipart/form-data"
PAGE = Path(__file__).with_name("page.html")


class ImageUpload(BaseModel):
    """The form POST /predict takes: one image file (PNG, JPEG, ...) in the field ``image``;
    ``preview=true`` adds the image as the model sees it to the answer."""

    image: UploadFile
    preview: bool = False


class ClassScore(BaseModel):
    class_index: int
    class_name: str
    confidence: float


class Prediction(ClassScore):
    """The most likely class and its softmax probability, then the ``top_k`` most likely."""

    top_k: list[ClassScore]
    preview: str | None = None  # a PNG data URL, when asked for


class ImageClassifierAPI(ls.LitAPI):
    """Decodes uploaded images as ``predict`` does and classifies them, in batches. A request
    that fails (not an image, or anything else) fails alone, never its batch."""

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
        """Load the checkpoint in each worker process, onto its device. The worker leaves
        SIGTERM and SIGINT to the server's main process, which stops it once the requests it
        holds are answered (``Server``), wherever the signal went."""
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, signal.SIG_IGN)
        self.model = load_classifier(self.ckpt_path)[0].to(device)
        self.class_names = list(self.model.hparams.class_names)
        self.channels = self.model.hparams.channels
        self.image_size = tuple(self.model.hparams.image_size)
        self.autocast = contextlib.nullcontext
        if device == "cpu":
            torch.set_num_threads(self.cpu_threads)
        elif device.startswith("cuda"):  # compute as predict does on this GPU
            dtype = torch.bfloat16 if default_precision() == "bf16-mixed" else torch.float16
            self.autocast = functools.partial(torch.autocast, "cuda", dtype=dtype)

    def decode_request(self, request: Annotated[ImageUpload, File()]) -> tuple[Any, bool]:
        try:
            image = decode(request.image.file.read(), self.channels, self.image_size)
        except ImageError as error:
            image = error
        except Exception as error:  # a decoder's own failure: this request's alone
            image = ImageError(f"the image cannot be decoded ({one_line(error)})")
        return image, request.preview

    def batch(self, inputs: list[tuple[Any, bool]]) -> list[tuple[Any, bool]]:
        return inputs  # stacked in predict, around the inputs that are errors

    @torch.inference_mode()
    def predict(self, inputs: Any) -> Any:
        """Classify one decoded image, or with batching a list of them; errors pass through."""
        batch = inputs if self.max_batch_size > 1 else [inputs]
        images = [image for image, _ in batch if isinstance(image, Tensor)]
        try:
            scores = iter(self.classify(torch.stack(images)) if images else [])
        except Exception:  # classify each alone, so that only a culprit fails
            scores = iter(self.classify_alone(image) for image in images)
        outputs = []
        for image, preview in batch:
            if not isinstance(image, Tensor):
                outputs.append(image)
                continue
            prediction = next(scores)
            if preview and isinstance(prediction, Prediction):
                prediction.preview = as_data_url(image)
            outputs.append(prediction)
        return outputs if self.max_batch_size > 1 else outputs[0]

    def classify_alone(self, image: Tensor) -> Prediction | Exception:
        try:
            return self.classify(image[None])[0]
        except Exception as error:
            return error

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

    def encode_response(self, output: Prediction | Exception) -> Prediction:
        # The schema of the answer is Prediction's; a returned JSONResponse goes to the client
        # as it is, past the schema.
        if isinstance(output, ImageError):
            return JSONResponse({"detail": str(output)}, status_code=422)
        if isinstance(output, Exception):
            return JSONResponse({"detail": f"the model failed: {one_line(output)}"}, 500)
        return output


def as_data_url(image: Tensor) -> str:
    """uint8 pixels as a PNG data URL (alpha left out)."""
    colour = (image[:3] if image.shape[0] >= 3 else image[0]).cpu().numpy()
    buffer = io.BytesIO()
    Image.fromarray(colour.transpose(1, 2, 0) if colour.ndim == 3 else colour).save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


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
    elif field == "image":
        detail = f"the form field {field!r} must be a file (curl -F {field}=@FILE)"
    else:
        detail = f"the form field {field!r}: {first['msg']}"
    return JSONResponse({"detail": detail}, status_code=422)


async def page() -> HTMLResponse:
    """The page where a person tries the model: pick or drop an image, see the answer."""
    return HTMLResponse(PAGE.read_text(encoding="utf-8"))


class QuietConnectionsClosed(HttpToolsProtocol):
    """uvicorn's HTTP protocol, closing a connection that sends nothing: its idle timeout
    (``--idle_timeout``) runs from the moment the connection opens, not only between requests."""

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self.timeout_keep_alive_task = self.loop.call_later(
            self.timeout_keep_alive, self.timeout_keep_alive_handler
        )


class Server(ls.LitServer):
    """LitServer, stopping in an order that answers every request it has read: the listening
    socket stops taking connections, the HTTP processes finish the requests they hold (the
    model workers still run), then the model workers and the queues go. LitServe's own order
    closes the queues first, and every process it forks keeps the socket listening."""

    stopping = False

    def _start_server(
        self, port: int, servers: int, log_level: str, sockets: list, *args: Any, **kwargs: Any
    ) -> dict:
        self.listening = sockets
        return super()._start_server(port, servers, log_level, sockets, *args, **kwargs)

    def _perform_graceful_shutdown(self, manager: Any, uvicorn_workers: dict, *args: Any) -> None:
        if self.stopping:  # LitServe's worker monitor calls this too
            return
        self.stopping = True
        for listening in getattr(self, "listening", []):
            # Shut down, not only closed: the processes LitServe forked share this socket.
            with contextlib.suppress(OSError):
                listening.shutdown(socket.SHUT_RDWR)
            listening.close()
        # Ends LitServe's worker monitor. From a thread of its own: this thread's connection to
        # the manager may still wait for the event, interrupted by the signal.
        setter = threading.Thread(target=self._shutdown_event.set, daemon=True)
        setter.start()
        setter.join(timeout=5)
        for worker in uvicorn_workers.values():
            worker.terminate()  # uvicorn's graceful shutdown: requests in flight are answered
        for worker in uvicorn_workers.values():
            worker.join(self.uvicorn_graceful_timeout)
            if worker.is_alive():
                worker.kill()
        for worker in self.inference_workers:
            worker.kill()  # they ignore SIGTERM (see setup) and hold nothing to save
            worker.join()
        manager.shutdown()


def build_server(
    ckpt_path: Path,
    top_k: int,
    accelerator: str,
    devices: int | str,
    workers_per_device: int,
    max_batch_size: int,
    batch_timeout: float,
    max_payload_mb: float,
    fast_queue: bool,
) -> Server:
    """The server for a checkpoint; loading it here first stops a bad one with one line."""
    model, _ = load_classifier(ckpt_path)
    class_names = list(model.hparams.class_names)
    # On CPU, the model workers and LitServe's HTTP processes (one per worker) share the cores
    # equally: with more torch threads they take cores from one another (on a busy 2-core
    # machine, torch's default of 2 threads made a one-image forward pass 100x slower than 1).
    cpu_threads = max(1, (os.cpu_count() or 1) // (2 * workers_per_device))
    api = ImageClassifierAPI(
        ckpt_path.resolve(),
        min(top_k, len(class_names)),
        cpu_threads,
        max_batch_size,
        batch_timeout,
    )
    server = Server(
        api,
        accelerator=accelerator,
        devices=devices,
        workers_per_device=workers_per_device,
        max_payload_size=int(max_payload_mb * 2**20),
        fast_queue=fast_queue,
        model_metadata={
            "class_names": class_names,
            "input_shape": list(model.input_shape),
            "checkpoint": ckpt_path.name,
            "template_version": TEMPLATE_VERSION,
            "max_pixels": MAX_PIXELS,
        },
    )
    server.app.add_exception_handler(RequestValidationError, request_error)
    # The page replaces LitServe's own GET / ("litserve running").
    routes = server.app.router.routes
    routes[:] = [route for route in routes if getattr(route, "path", None) != "/"]
    server.app.add_api_route("/", page, methods=["GET"], include_in_schema=False)
    return server
