"""The server as users start it, for the tests: a subprocess on a free loopback port; its
processes; and a model API that sends the server what it cannot read."""

import contextlib
import gc
import http.client
import json
import os
import re
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
from litserve.transport.base import MessageTransport

from {{ cookiecutter.package_name }}.inference import serve
from {{ cookiecutter.package_name }}.inference.api import ImageClassifierAPI
from {{ cookiecutter.package_name }}.support.errors import ImageError


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
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        content_type: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> Answer:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            sent = {"Content-Type": content_type} if content_type else {}
            connection.request(method, path, body=body, headers=sent | (headers or {}))
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

    def processes(self) -> dict[str, int]:
        """The server's processes by role, from /proc (Linux)."""
        main = self.process.pid
        children = {pid for pid in session_processes(main) if parent_of(pid) == main}
        roles = {"main process": main}
        for pid in children:
            arguments = Path(f"/proc/{pid}/cmdline").read_bytes()
            if b"resource_tracker" in arguments:
                roles["resource tracker"] = pid
            elif b"spawn_main" in arguments:
                roles["model worker"] = pid
        http_process = re.search(r"Started server process \[(\d+)\]", self.log.read_text())
        roles["HTTP process"] = int(http_process[1])
        (roles["queue manager"],) = children - set(roles.values())  # the other forked one
        return roles


def session_processes(session: int) -> set[int]:
    """The live processes of a session (Linux: /proc); a zombie holds nothing any more."""
    pids = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            state, _, _, sid = stat.read_text().rpartition(")")[2].split()[:4]
            if int(sid) == session and state != "Z":
                pids.add(int(stat.parent.name))
    return pids


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])


def unix_socket_paths(pids: set[int]) -> set[str]:
    """The addresses (paths, or @names in Linux's abstract namespace) of the unix sockets
    these processes hold."""
    inodes = set()
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    inodes.add(os.readlink(fd))
    paths = set()
    for line in Path("/proc/net/unix").read_text().splitlines()[1:]:
        fields = line.split()
        if len(fields) == 8 and f"socket:[{fields[6]}]" in inodes:
            paths.add(fields[7])
    return paths


@contextlib.contextmanager
def running_server(
    checkpoint: Path,
    workdir: Path,
    env: dict[str, str],
    *flags: str,
    port: int | None = None,
    program: list[str] | None = None,
) -> Iterator[Server]:
    """The serve command (or ``program``, that takes its flags) on a loopback port, free
    unless given, on CPU, under umask 000 (as in many containers: whatever the server creates
    is as open to other users as it can be); stopped and cleaned up afterwards."""
    port = port or free_port()
    args = ["--ckpt_path", str(checkpoint), "--port", str(port), "--accelerator", "cpu", *flags]
    log = workdir / f"server-{port}.log"
    with log.open("w") as output:
        # In a session of its own: the teardown can end every process the server started.
        process = subprocess.Popen(
            [*(program or command("inference.serve")), *args],
            cwd=workdir,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            umask=0,
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


def unreadable() -> None:
    raise ValueError("this answer cannot be unpickled")


class Unreadable:
    """An answer that a model worker pickles and the HTTP process cannot unpickle."""

    def __reduce__(self) -> tuple:
        return unreadable, ()


class MalformedAnswers(ImageClassifierAPI):
    """The model's API, answering a file that is not an image with messages of the wrong
    shape, sent through the server's own transport, then with an answer that cannot be read."""

    def encode_response(self, output: Any) -> Any:
        if not isinstance(output, ImageError):
            return super().encode_response(output)
        transport = next(each for each in gc.get_objects() if isinstance(each, MessageTransport))
        transport.send((42, "not a message of LitServe's"), consumer_id=0)
        transport.send(("no such request", ("not", "an", "answer")), consumer_id=0)
        return Unreadable()


def serve_with(api: type[ImageClassifierAPI]) -> None:
    """The serve command with its flags, serving the model with ``api``."""
    from {{ cookiecutter.package_name }}.inference import server

    server.ImageClassifierAPI = api
    serve.main()
