"""The model's API for LitServe: the form it takes, the answer it gives, and how a batch of
uploads becomes predictions, each request failing alone."""

import base64
import contextlib
import functools
import io
import multiprocessing
import signal
from pathlib import Path
from typing import Annotated, Any

import litserve as ls
import torch
from fastapi import File, UploadFile
from fastapi.responses import JSONResponse
from PIL import Image
from pydantic import BaseModel
from torch import Tensor

from ..support.errors import ImageError, one_line
from ..support.images import decode
from ..support.process import default_precision
from .classifier import load_classifier
from .processes import OpportunisticBatches, die_with_parent


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
        loop = OpportunisticBatches() if max_batch_size > 1 else "auto"
        super().__init__(max_batch_size=max_batch_size, batch_timeout=batch_timeout, loop=loop)
        self.ckpt_path = ckpt_path
        self.top_k = top_k
        self.cpu_threads = cpu_threads

    def setup(self, device: str) -> None:
        """Load the checkpoint in each worker process, onto its device. The worker leaves
        SIGTERM and SIGINT to the server's main process, which stops it once the requests it
        holds are answered (``Server``), wherever the signal went; it ends with that process
        however that one ends, killed included."""
        die_with_parent(multiprocessing.parent_process().pid)
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
