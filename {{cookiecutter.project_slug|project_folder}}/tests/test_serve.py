"""The server as users start it: a subprocess on a free loopback port, sent real HTTP requests.

The module's tests share one server (starting one takes seconds); the last test stops it with
SIGTERM. Test images are PNG files of the data module's test split, so the tests hold for any
``data.py`` whose images have one or three channels.
"""

import base64
import contextlib
import csv
import http.client
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import Fit
from PIL import Image
from torchvision.io import encode_png

from {{ cookiecutter.package_name }} import TEMPLATE_VERSION
from {{ cookiecutter.package_name }}.data import ImageDataModule
from {{ cookiecutter.package_name }}.images import MAX_PIXELS
from {{ cookiecutter.package_name }}.predict import predict

pytest.importorskip("litserve", reason="LitServe is not installed: pip install -e '.[serve]'")

TOP_K = 3
MAX_PAYLOAD_MB = 1
JSON = "application/json"


@dataclass
class Answer:
    status: int
    body: Any  # the JSON document, or the text of an answer that is not JSON


def multipart(fields: dict[str, bytes | str]) -> tuple[bytes, str]:
    """A multipart/form-data body and its content type: bytes as files, str as text fields."""
    boundary = uuid.uuid4().hex
    body = b""
    for name, value in fields.items():
        disposition = f'Content-Disposition: form-data; name="{name}"'
        if isinstance(value, bytes):
            head = f'{disposition}; filename="{name}.png"\r\nContent-Type: image/png'
        else:
            head, value = disposition, value.encode()
        body += f"--{boundary}\r\n{head}\r\n\r\n".encode() + value + b"\r\n"
    return body + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


@dataclass
class Server:
    process: subprocess.Popen
    port: int
    log: Path

    def request(
        self, method: str, path: str, body: bytes | None = None, content_type: str | None = None
    ) -> Answer:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            headers = {"Content-Type": content_type} if content_type else {}
            connection.request(method, path, body=body, headers=headers)
            response = connection.getresponse()
            data = response.read()
        finally:
            connection.close()
        is_json = response.getheader("Content-Type", "").startswith("application/json")
        return Answer(response.status, json.loads(data) if is_json else data.decode())

    def post_image(self, image: bytes) -> Answer:
        return self.request("POST", "/predict", *multipart({"image": image}))

    def wait_until_healthy(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"the server exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                if self.request("GET", "/health").status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        pytest.fail(f"the server was not healthy after {timeout} s:\n{self.log_tail()}")

    def wait_for_log(self, text: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.log.read_text():
            assert time.monotonic() < deadline, f"no {text!r} in the log:\n{self.log_tail()}"
            time.sleep(0.05)

    def log_tail(self) -> str:
        return "\n".join(self.log.read_text().splitlines()[-30:])


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def port_is_free(port: int) -> bool:
    """Whether no socket listens on the port (connections closing down do not count)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
            probe.listen()
        except OSError:
            return False
    return True


@pytest.fixture(scope="module")
def checkpoint(fit: Fit, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint of a one-epoch fit: the server must give the answers of this model, however
    good it is."""
    workdir = tmp_path_factory.mktemp("run")
    cli = fit(workdir, "--trainer.max_epochs=1")
    return workdir / cli.config_init["checkpoint"].best_model_path


@pytest.fixture(scope="module")
def datamodule(data_args: dict[str, Any]) -> ImageDataModule:
    """The data module of the sample: its facts and its test split."""
    datamodule = ImageDataModule(**data_args)
    datamodule.setup("test")
    return datamodule


@pytest.fixture(scope="module")
def image_files(
    datamodule: ImageDataModule, tmp_path_factory: pytest.TempPathFactory
) -> list[Path]:
    """The first 16 images of the data module's test split, as PNG files."""
    images = next(iter(datamodule.test_dataloader()))[0][:16]
    assert images.shape[1] in (1, 3), "PNG files hold one or three channels"
    folder = tmp_path_factory.mktemp("images")
    paths = [folder / f"{index:02d}.png" for index in range(len(images))]
    for image, path in zip(images, paths, strict=True):
        path.write_bytes(encode_png(image).numpy().tobytes())
    return paths


@pytest.fixture(scope="module")
def expected(
    checkpoint: Path, image_files: list[Path], tmp_path_factory: pytest.TempPathFactory
) -> dict[bytes, dict[str, str]]:
    """The predict command's CSV row for each image file, by the file's contents."""
    output = tmp_path_factory.mktemp("predict") / "predictions.csv"
    predict(checkpoint, image_files[0].parent, output, accelerator="cpu")
    with output.open(newline="") as file:
        rows = list(csv.DictReader(file))
    assert [row["source"] for row in rows] == [str(path) for path in image_files]
    return {path.read_bytes(): row for path, row in zip(image_files, rows, strict=True)}


@pytest.fixture(scope="module")
def server(
    checkpoint: Path, child_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """The serve command on a free loopback port, on CPU like the predict run it is compared
    with, batching up to 8 requests that arrive within 50 ms."""
    workdir = tmp_path_factory.mktemp("server")
    port = free_port()
    command = [
        *(sys.executable, "-m", "{{ cookiecutter.package_name }}.serve"),
        *("--ckpt_path", str(checkpoint), "--port", str(port), "--accelerator", "cpu"),
        *("--max_batch_size", "8", "--batch_timeout", "0.05"),
        *("--max_payload_mb", str(MAX_PAYLOAD_MB), "--top_k", str(TOP_K)),
    ]
    log = workdir / "server.log"
    with log.open("w") as output:
        # In a session of its own: the teardown can end every process the server started.
        process = subprocess.Popen(
            command,
            cwd=workdir,
            env=child_env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = Server(process, port, log)
    try:
        server.wait_until_healthy()
        yield server
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=60)
        with contextlib.suppress(ProcessLookupError):  # none left: the usual case
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def assert_matches(answer: Answer, row: dict[str, str]) -> None:
    """The server's answer agrees with the predict command's CSV row."""
    assert answer.status == 200, answer.body
    assert answer.body["class_index"] == int(row["class_index"])
    assert answer.body["class_name"] == row["class_name"]
    assert abs(answer.body["confidence"] - float(row["confidence"])) <= 1e-6


def test_health_and_info_describe_the_checkpoint(
    server: Server, checkpoint: Path, datamodule: ImageDataModule
) -> None:
    assert server.request("GET", "/health") == Answer(200, "ok")
    info = server.request("GET", "/info")
    assert info.status == 200
    assert info.body["model"] == {
        "class_names": list(datamodule.class_names),
        "input_shape": [datamodule.channels, *datamodule.image_size],
        "checkpoint": str(checkpoint.resolve()),
        "template_version": TEMPLATE_VERSION,
        "max_pixels": MAX_PIXELS,
    }


def test_answers_agree_with_the_predict_command(
    server: Server, expected: dict[bytes, dict[str, str]], datamodule: ImageDataModule
) -> None:
    names = list(datamodule.class_names)
    for image, row in expected.items():
        answer = server.post_image(image)
        assert_matches(answer, row)
        top_k = answer.body["top_k"]
        assert len(top_k) == min(TOP_K, len(names))
        assert top_k[0] == {key: answer.body[key] for key in top_k[0]}
        assert [score["class_name"] for score in top_k] == [
            names[score["class_index"]] for score in top_k
        ]
        confidences = [score["confidence"] for score in top_k]
        assert confidences == sorted(confidences, reverse=True)


def test_concurrent_requests_each_get_their_own_answer(
    server: Server, expected: dict[bytes, dict[str, str]]
) -> None:
    """Requests sent together, which the server batches, each get the answer to their own
    image; a broken image among them fails alone."""
    images = list(expected) * 2
    broken = [image[: len(image) // 2] for image in images[:8]]
    with ThreadPoolExecutor(max_workers=len(images) + len(broken)) as pool:
        answers = list(pool.map(server.post_image, images + broken))
    for image, answer in zip(images, answers[: len(images)], strict=True):
        assert_matches(answer, expected[image])
    for answer in answers[len(images) :]:
        assert answer.status == 422 and "truncated" in answer.body["detail"], answer


def huge_png() -> bytes:
    """A valid PNG file of a few kilobytes with one pixel more than images.MAX_PIXELS."""
    buffer = io.BytesIO()
    Image.new("1", (MAX_PIXELS + 1, 1)).save(buffer, format="PNG")
    return buffer.getvalue()


BAD_REQUESTS: dict[str, tuple[Callable[[bytes], tuple[bytes | None, str | None]], int, str]] = {
    "not an image": (lambda png: multipart({"image": b"just some text"}), 422, "not an image"),
    "empty file": (lambda png: multipart({"image": b""}), 422, "empty"),
    "truncated PNG": (lambda png: multipart({"image": png[: len(png) // 2]}), 422, "truncated"),
    "too many pixels": (lambda png: multipart({"image": huge_png()}), 422, "pixels"),
    "over-size body": (
        lambda png: multipart({"image": png + bytes(MAX_PAYLOAD_MB * 2**20)}),
        413,
        "too large",
    ),
    "raw image body": (lambda png: (png, "image/png"), 415, "multipart/form-data"),
    "malformed JSON": (lambda png: (b'{"image": ', JSON), 415, f"not as {JSON}"),
    "JSON with base64": (
        lambda png: (json.dumps({"image": base64.b64encode(png).decode()}).encode(), JSON),
        415,
        "multipart/form-data",
    ),
    "no body": (lambda png: (None, None), 415, "no content type"),
    "broken multipart": (
        lambda png: (b"--x\r\nnot a part", "multipart/form-data; boundary=x"),
        400,
        "multipart",
    ),
    "no image field": (lambda png: multipart({"picture": png}), 422, "no field 'image'"),
    "text, not a file": (lambda png: multipart({"image": "7"}), 422, "must be a file"),
}


@pytest.mark.parametrize("case", BAD_REQUESTS)
def test_bad_request_gets_one_line_4xx_and_the_server_goes_on(
    server: Server, expected: dict[bytes, dict[str, str]], case: str
) -> None:
    build, status, reason = BAD_REQUESTS[case]
    image, row = next(iter(expected.items()))
    answer = server.request("POST", "/predict", *build(image))
    assert answer.status == status, answer
    detail = answer.body["detail"]
    assert isinstance(detail, str) and "\n" not in detail and reason in detail, detail
    assert_matches(server.post_image(image), row)


def test_bad_checkpoint_or_flag_stops_the_command_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from {{ cookiecutter.package_name }}.serve import main

    missing = tmp_path / "missing.ckpt"
    with pytest.raises(SystemExit) as exit_info:
        main(["--ckpt_path", str(missing)])
    assert exit_info.value.code == f"error: checkpoint {missing} does not exist"
    with pytest.raises(SystemExit) as exit_info:
        main(["--ckpt_path", str(missing), "--max_batch_size", "0"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.endswith("--max_batch_size must be at least 1, not 0\n")


def test_sigterm_answers_the_request_in_flight_then_stops(
    server: Server, expected: dict[bytes, dict[str, str]]
) -> None:
    """Run last: it stops the module's server."""
    image, row = next(iter(expected.items()))
    body, content_type = multipart({"image": image})
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    connection.putrequest("POST", "/predict")
    connection.putheader("Content-Type", content_type)
    connection.putheader("Content-Length", str(len(body)))
    connection.endheaders(body[:50])  # the server now waits for the rest of the request
    server.process.send_signal(signal.SIGTERM)
    server.wait_for_log("Waiting for connections to close")
    connection.send(body[50:])
    response = connection.getresponse()
    assert_matches(Answer(response.status, json.loads(response.read())), row)
    connection.close()
    assert server.process.wait(timeout=60) == 0, server.log_tail()
    assert port_is_free(server.port), "a process of the server still holds its port"
