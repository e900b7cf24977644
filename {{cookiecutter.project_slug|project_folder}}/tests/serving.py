"""The server as users start it, for the tests: a subprocess on a free loopback port."""

import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from helpers import command, free_port


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


@dataclass
class Server:
    process: subprocess.Popen
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

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
            with contextlib.suppress(OSError):
                if self.request("GET", "/health").status == 200:
                    return
            time.sleep(0.1)
        pytest.fail(f"the server was not healthy after {timeout} s:\n{self.log_tail()}")

    def wait_for_log(self, text: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.log.read_text():
            assert time.monotonic() < deadline, f"no {text!r} in the log:\n{self.log_tail()}"
            time.sleep(0.05)

    def log_tail(self) -> str:
        return "\n".join(self.log.read_text().splitlines()[-30:])


@contextlib.contextmanager
def running_server(
    checkpoint: Path, workdir: Path, env: dict[str, str], *flags: str
) -> Iterator[Server]:
    """The serve command on a free loopback port, on CPU; stopped and cleaned up afterwards."""
    port = free_port()
    args = ["--ckpt_path", str(checkpoint), "--port", str(port), "--accelerator", "cpu", *flags]
    log = workdir / f"server-{port}.log"
    with log.open("w") as output:
        # In a session of its own: the teardown can end every process the server started.
        process = subprocess.Popen(
            command("inference.serve", *args),
            cwd=workdir,
            env=env,
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
