"""The endpoint a user would otherwise write: one FastAPI process, the same decoding and model.

    python plain_server.py PROJECT_SRC CKPT PORT

The yardstick of benchmarks/serve.py: POST /predict takes the same multipart upload and answers
the same JSON as the baked project's LitServe server, decoding with the project's
``images.decode`` and calling the checkpoint's model on one image per request. The endpoint is
a plain ``def``, which FastAPI runs in its thread pool, as its documentation advises for
blocking work.
"""

import sys
from pathlib import Path

import torch
import uvicorn
from fastapi import FastAPI, HTTPException, UploadFile

TOP_K = 5


def main(src: str, ckpt_path: str, port: int) -> None:
    sys.path.insert(0, src)
    from mnist_lab.inference.classifier import load_classifier
    from mnist_lab.support.errors import ImageError
    from mnist_lab.support.images import decode

    model, _ = load_classifier(Path(ckpt_path))
    channels, image_size = model.hparams.channels, tuple(model.hparams.image_size)
    class_names = list(model.hparams.class_names)
    app = FastAPI()

    @app.get("/health")
    def health() -> str:
        return "ok"

    @app.post("/predict")
    def predict(image: UploadFile) -> dict:
        try:
            pixels = decode(image.file.read(), channels, image_size)
        except ImageError as error:
            raise HTTPException(status_code=422, detail=str(error)) from error
        with torch.inference_mode():
            confidences, indices = model(pixels[None]).softmax(dim=1).topk(TOP_K, dim=1)
        top_k = [
            {"class_index": index, "class_name": class_names[index], "confidence": confidence}
            for index, confidence in zip(indices[0].tolist(), confidences[0].tolist(), strict=True)
        ]
        return {**top_k[0], "top_k": top_k}

    uvicorn.run(app, host="127.0.0.1", port=port)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
