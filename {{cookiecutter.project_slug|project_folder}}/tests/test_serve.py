"""The server as users start it, sent real HTTP requests on loopback.

The module's tests share one server (starting one takes seconds) until the last ones stop
servers with signals. Test images are PNG files of the data module's test split, so the
tests hold for any ``data.py`` whose images have one or three channels. The tests of the
server's processes read Linux's /proc.
"""

import asyncio
import base64
import http.client
import io
import json
import os
import queue
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from helpers import Run, exit_message, read_rows, write_png
from PIL import Image
from serving import (
    Answer,
    Server,
    free_port,
    multipart,
    port_is_free,
    running_server,
    session_processes,
    unix_socket_paths,
)

from {{ cookiecutter.package_name }} import TEMPLATE_VERSION
from {{ cookiecutter.package_name }}.inference import serve
from {{ cookiecutter.package_name }}.inference.predict import predict
from {{ cookiecutter.package_name }}.inference.processes import (
    OpportunisticBatches,
    RequestPipes,
)
from {{ cookiecutter.package_name }}.support.images import MAX_PIXELS

pytestmark = pytest.mark.slow
linux_only = pytest.mark.skipif(not Path("/proc/net/unix").exists(), reason="reads Linux's /proc")

TOP_K = 3
MAX_PAYLOAD_MB = 1
JSON = "application/json"


@pytest.fixture(scope="module")
def image_files(trained: Run, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """The first 16 images of the data module's test split as PNG files, and the same as GIF
    and WebP (formats whose decoding ignores the asked channels)."""
    datamodule = trained.cli.datamodule
    datamodule.setup("test")
    images = next(iter(datamodule.test_dataloader()))[0][:16]
    assert images.shape[1] in (1, 3), "PNG files hold one or three channels"
    folder = tmp_path_factory.mktemp("images")
    paths = [folder / f"{index:02d}.png" for index in range(len(images))]
    for image, path in zip(images, paths, strict=True):
        write_png(image, path)
    for index, image_format in ((0, "GIF"), (1, "WEBP")):
        with Image.open(paths[index]) as picture:
            picture.save(
                folder / f"{index:02d}.{image_format.lower()}", image_format, lossless=True
            )
    return sorted(folder.iterdir())


@pytest.fixture(scope="module")
def expected(
    trained: Run, image_files: list[Path], tmp_path_factory: pytest.TempPathFactory
) -> dict[bytes, dict[str, str]]:
    """The predict command's CSV row for each image file, by the file's contents."""
    output = tmp_path_factory.mktemp("predict") / "predictions.csv"
    predict(trained.best, image_files[0].parent, output, accelerator="cpu")
    rows = read_rows(output)
    assert [row["source"] for row in rows] == [str(path) for path in image_files]
    return {path.read_bytes(): row for path, row in zip(image_files, rows, strict=True)}


@pytest.fixture(scope="module")
def server(
    trained: Run, child_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """Batching up to 8 requests that arrive within 50 ms; silent connections closed after 1 s."""
    flags = ["--max_batch_size", "8", "--batch_timeout", "0.05", "--idle_timeout", "1"]
    flags += ["--max_payload_mb", str(MAX_PAYLOAD_MB), "--top_k", str(TOP_K)]
    with running_server(
        trained.best, tmp_path_factory.mktemp("server"), child_env, *flags
    ) as server:
        yield server


def assert_matches(answer: Answer, row: dict[str, str]) -> None:
    """The server's answer agrees with the predict command's CSV row."""
    assert answer.status == 200, answer.body
    assert answer.body["class_index"] == int(row["class_index"])
    assert answer.body["class_name"] == row["class_name"]
    assert abs(answer.body["confidence"] - float(row["confidence"])) <= 1e-6


def test_health_and_info_describe_the_checkpoint(server: Server, trained: Run) -> None:
    datamodule = trained.cli.datamodule
    assert server.request("GET", "/health") == Answer(200, "ok")
    info = server.request("GET", "/info")
    assert info.status == 200
    assert info.body["model"] == {
        "class_names": list(datamodule.class_names),
        "input_shape": [datamodule.channels, *datamodule.image_size],
        "checkpoint": trained.best.name,
        "template_version": TEMPLATE_VERSION,
        "max_pixels": MAX_PIXELS,
    }


def test_answers_agree_with_the_predict_command(
    server: Server, expected: dict, trained: Run
) -> None:
    names = list(trained.cli.datamodule.class_names)
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


def test_concurrent_requests_each_get_their_own_answer(server: Server, expected: dict) -> None:
    """Requests sent together, which the server batches, each get the answer to their own
    image, GIFs and WebPs among PNGs included; a broken image among them fails alone."""
    images = list(expected) * 3
    broken = [image[: len(image) // 2] for image in images[:8]]
    with ThreadPoolExecutor(max_workers=len(images) + len(broken)) as pool:
        answers = list(pool.map(server.post_image, images + broken))
    for image, answer in zip(images, answers[: len(images)], strict=True):
        assert_matches(answer, expected[image])
    for answer in answers[len(images) :]:
        assert answer.status == 422 and "truncated" in answer.body["detail"], answer


def test_preview_is_the_image_as_the_model_sees_it(
    server: Server, expected: dict, trained: Run
) -> None:
    image = next(iter(expected))
    answer = server.request("POST", "/predict", *multipart({"image": image, "preview": "true"}))
    prefix = "data:image/png;base64,"
    assert answer.status == 200 and answer.body["preview"].startswith(prefix)
    with Image.open(io.BytesIO(base64.b64decode(answer.body["preview"][len(prefix) :]))) as seen:
        height, width = trained.cli.datamodule.image_size
        assert seen.size == (width, height)
    assert server.post_image(image).body.get("preview") is None


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
        lambda png: multipart({"image": png + bytes(2 * MAX_PAYLOAD_MB * 2**20)}),
        413,
        f"the request is {2 * MAX_PAYLOAD_MB}.0 MB, more than --max_payload_mb {MAX_PAYLOAD_MB}",
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
    server: Server, expected: dict, case: str
) -> None:
    build, status, reason = BAD_REQUESTS[case]
    image, row = next(iter(expected.items()))
    answer = server.request("POST", "/predict", *build(image))
    assert answer.status == status, answer
    detail = answer.body["detail"]
    assert isinstance(detail, str) and "\n" not in detail and reason in detail, detail
    assert_matches(server.post_image(image), row)


def test_a_silent_connection_is_closed(server: Server) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as silent:
        start = time.monotonic()
        assert silent.recv(1) == b""  # closed by the server, which sent nothing
        assert time.monotonic() - start < 5


def test_command_errors_are_one_line(
    server: Server,
    trained: Run,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    missing = tmp_path / "missing.ckpt"
    assert (
        exit_message(serve.main, ["--ckpt_path", str(missing)])
        == f"error: checkpoint {missing} does not exist"
    )
    taken = ["--ckpt_path", str(missing), "--port", str(server.port)]
    assert exit_message(serve.main, taken) == (
        f"error: port {server.port} of 127.0.0.1 is taken: another server listens there; "
        "stop it, or choose another --port"
    )
    if not torch.cuda.is_available():
        no_gpu = ["--ckpt_path", str(trained.best), "--accelerator=cuda", f"--port={free_port()}"]
        assert exit_message(serve.main, no_gpu) == (
            "error: --accelerator cuda: this machine has no such device; use auto or cpu"
        )
    with pytest.raises(SystemExit):
        serve.main(["--ckpt_path", str(missing), "--max_batch_size", "0"])
    assert (
        capsys.readouterr()
        .err.strip()
        .endswith("argument --max_batch_size: must be above 0, not 0")
    )
    monkeypatch.setitem(sys.modules, "litserve", None)  # as without the serve extra
    assert exit_message(serve.main, ["--ckpt_path", str(missing)]) == (
        'error: serve needs litserve, which is not installed: pip install -e ".[serve]"'
    )


FOREIGN_REQUESTS: dict[str, tuple[str, dict[str, str], str]] = {
    "another host name (DNS rebinding)": (
        "GET",
        {"Host": "rebound.example:8000"},
        "this server answers to 127.0.0.1 localhost (--allowed_hosts), not to the host "
        "'rebound.example:8000'",
    ),
    "a POST from another site's page": (
        "POST",
        {"Origin": "http://elsewhere.example"},
        "a POST from the page of another site (http://elsewhere.example) is refused",
    ),
    "a POST from a page of no site": (
        "POST",
        {"Origin": "null"},
        "a POST from the page of another site (null) is refused",
    ),
}


@pytest.mark.parametrize("case", FOREIGN_REQUESTS)
def test_requests_of_other_sites_get_one_line_403(
    server: Server, expected: dict, case: str
) -> None:
    method, headers, detail = FOREIGN_REQUESTS[case]
    image, row = next(iter(expected.items()))
    if method == "POST":
        answer = server.request("POST", "/predict", *multipart({"image": image}), headers)
    else:
        answer = server.request(method, "/info", headers=headers)
    assert answer == Answer(403, {"detail": detail})
    assert_matches(server.post_image(image), row)


def test_the_servers_own_names_and_pages_are_answered(server: Server, expected: dict) -> None:
    """A loopback server answers to its address and to localhost, and to a POST from its own
    page; other machines' servers to any host name unless told (--allowed_hosts)."""
    image, row = next(iter(expected.items()))
    body, content_type = multipart({"image": image})
    for host in (f"localhost:{server.port}", f"127.0.0.1:{server.port}"):
        headers = {"Host": host, "Origin": f"http://{host}"}
        assert_matches(server.request("POST", "/predict", body, content_type, headers), row)
    assert server.request("GET", "/docs").status == 404  # no API console open to the network
    assert serve.parse_args(["--ckpt_path", "x", "--host", "0.0.0.0"]).allowed_hosts == ["*"]
    named = ["--ckpt_path", "x", "--host", "::", "--allowed_hosts", "Lab.Example", "[::1]"]
    assert serve.parse_args(named).allowed_hosts == ["lab.example", "::1"]


@linux_only
def test_no_other_process_can_reach_the_transport(server: Server) -> None:
    """Every unix socket the server's processes hold lies in a folder of the user's own (0700),
    under umask 000 too: LitServe's manager, which holds the model workers' status and asks
    for the server's authentication key before it reads anything. The requests and the
    answers travel through anonymous pipes, which no other process can open."""
    paths = unix_socket_paths(session_processes(server.process.pid))
    assert paths, "no unix socket at all: LitServe's manager has one"
    for path in paths:
        assert not path.startswith("@"), f"{path}: in the abstract namespace, open to any process"
        folder = Path(path).parent.stat()
        assert (folder.st_mode & 0o777, folder.st_uid) == (0o700, os.getuid()), path


def test_a_batch_is_what_queued_and_a_lone_request_waits_for_none() -> None:
    """The requests that queued while the model was busy make one batch, up to its size; one
    that comes later joins it only within ``batch_timeout``; one that waited past the
    server's timeout is told so (504)."""
    requests: queue.Queue = queue.Queue()
    loop = OpportunisticBatches()
    for waited in (0, 0, 60, 0):  # seconds, the third past LitServe's default timeout of 30
        requests.put((0, f"uid-{len(requests.queue)}", time.monotonic() - waited, "payload"))
    api = SimpleNamespace(max_batch_size=3, batch_timeout=0, request_timeout=30)
    batch, timed_out = loop.get_batch_requests(api, requests, None)
    assert [uid for _, uid, _ in batch] == ["uid-0", "uid-1"] and timed_out == [(0, "uid-2")]
    for batch_timeout, expected in ((0, ["uid-3"]), (5, ["uid-3", "uid-4"])):
        later = threading.Timer(0.5, requests.put, [(0, "uid-4", time.monotonic(), "payload")])
        later.start()
        api.batch_timeout = batch_timeout
        batch, _ = loop.get_batch_requests(api, requests, None)
        assert [uid for _, uid, _ in batch] == expected, f"batch_timeout {batch_timeout}"
        later.join()
        requests.queue.clear()
        requests.put((0, "uid-3", time.monotonic(), "payload"))


def test_an_http_process_never_waits_on_its_request_pipe() -> None:
    """Requests beyond what the pipes hold, sent while no model worker reads: sending returns
    at once, and the model workers then get every request whole, each HTTP process's in
    order, the two taking turns."""
    pipes = RequestPipes.for_producers(2)
    sent = [(index % 2, f"uid-{index}", 0.0, os.urandom(100_000)) for index in range(40)]
    received: list[tuple] = []
    all_sent, sent_in_time = threading.Event(), []

    def model_worker() -> None:
        sent_in_time.append(all_sent.wait(timeout=10))  # else a blocked sender waits for this
        while len(received) < len(sent):
            received.append(pipes.get(timeout=10))

    async def http_processes() -> None:
        for request in sent:
            pipes.put(request)
        all_sent.set()
        while reader.is_alive():  # the event loop writes the rest as the pipes empty
            await asyncio.sleep(0.01)

    reader = threading.Thread(target=model_worker)
    reader.start()
    asyncio.run(http_processes())
    assert sent_in_time == [True] and len(received) == len(sent)
    for process in (0, 1):
        assert [item for item in received if item[0] == process] == sent[process::2]
    assert [item[0] for item in received[:4]] == [0, 1, 0, 1]
    with pytest.raises(queue.Empty):
        pipes.get(timeout=0)


def test_an_answer_the_server_cannot_read_fails_alone(
    trained: Run, expected: dict, child_env: dict[str, str], tmp_path: Path
) -> None:
    """Messages of the wrong shape and an answer that cannot be unpickled, sent through the
    server's own transport by the model's API: the request gets a 500 at once, and the server
    answers the next ones and stops on SIGTERM."""
    program = [sys.executable, "-c", "import serving; serving.serve_with(serving.MalformedAnswers)"]
    with running_server(trained.best, tmp_path, child_env, program=program) as server:
        image, row = next(iter(expected.items()))
        answer = server.post_image(b"not an image")
        assert answer == Answer(500, {"detail": "the server could not read the model's answer"})
        for _ in range(3):
            assert_matches(server.post_image(image), row)
        log = server.log.read_text()
        assert "skipped a message of a model worker" in log and "cannot be read" in log, log
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=30) == 0, server.log_tail()


@linux_only
def test_a_killed_process_stops_the_whole_server_and_frees_its_port(
    trained: Run, child_env: dict[str, str], tmp_path: Path
) -> None:
    """SIGKILL to any process of the server (what the OOM killer sends) ends all of them
    within seconds, frees the port and leaves no socket file: each server after the first
    starts on the port of the one killed before it. The death of any but the main process
    is said in one line; the main process killed, the kernel ends the others (Linux)."""
    port = free_port()
    for role in ("main process", "HTTP process", "model worker", "queue manager"):
        with running_server(trained.best, tmp_path, child_env, port=port) as server:
            pids = server.processes()
            sockets = unix_socket_paths(set(pids.values()))
            os.kill(pids[role], signal.SIGKILL)
            deadline = time.monotonic() + 10
            while session_processes(server.process.pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            left = session_processes(server.process.pid)
            assert not left, f"{role} killed: {left} of {pids} still run\n{server.log_tail()}"
            assert port_is_free(port), f"{role} killed: the port is still taken"
            assert not [path for path in sockets if Path(path).exists()], f"{role} killed"
            if role != "main process":
                assert server.process.wait() == 1
                assert server.log_tail().splitlines()[-1] == (
                    f"error: the {role} (pid {pids[role]}) stopped (killed by signal 9); "
                    "the server stopped"
                )
            if role in ("HTTP process", "model worker"):  # the others' queues end with it
                assert "Traceback" not in server.log.read_text(), server.log_tail()


def test_sigterm_answers_the_request_in_flight_then_stops(server: Server, expected: dict) -> None:
    """Run after the tests above: it stops the module's server."""
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
    assert "Traceback" not in server.log.read_text(), server.log_tail()


def load(server: Server, image: bytes, seconds: float, outcomes: list[Any]) -> None:
    """One client sending requests on a keep-alive connection until ``seconds`` pass or the
    server stops accepting; each outcome is a status, or how long a failed request took."""
    body, content_type = multipart({"image": image})
    deadline, connection = time.monotonic() + seconds, None
    while time.monotonic() < deadline:
        start = time.monotonic()
        try:
            connection = connection or http.client.HTTPConnection(
                "127.0.0.1", server.port, timeout=60
            )
            connection.request(
                "POST", "/predict", body=body, headers={"Content-Type": content_type}
            )
            response = connection.getresponse()
            response.read()
            outcomes.append(response.status)
        except ConnectionRefusedError:
            return  # the server no longer listens: stopped
        except (OSError, http.client.HTTPException):
            outcomes.append(time.monotonic() - start)
            connection = None  # closed by the server between requests: take a new one


def test_sigterm_to_every_process_twice_under_load_answers_what_was_read(
    trained: Run, expected: dict, child_env: dict[str, str], tmp_path: Path
) -> None:
    """What `docker stop` in some set-ups, systemd and Kubernetes send: SIGTERM to each of the
    server's processes; and a second one, from an impatient operator."""
    with running_server(trained.best, tmp_path, child_env) as server:
        image = next(iter(expected))
        outcomes: list[Any] = []
        with ThreadPoolExecutor(max_workers=8) as pool:
            clients = [pool.submit(load, server, image, 30, outcomes) for _ in range(8)]
            time.sleep(2)
            os.killpg(server.process.pid, signal.SIGTERM)
            time.sleep(0.2)
            os.killpg(server.process.pid, signal.SIGTERM)
            stopped = time.monotonic()
            assert server.process.wait(timeout=60) == 0, server.log_tail()
            for client in clients:
                client.result()
        failed = [outcome for outcome in outcomes if isinstance(outcome, float)]
        took = time.monotonic() - stopped
        assert took < 15, f"{took:.1f} s; failed requests took {failed}\n{server.log_tail()}"
        answered = [outcome for outcome in outcomes if isinstance(outcome, int)]
        assert answered and set(answered) == {200}, "an answer that is not 200"
        # A request on a connection the server closed as idle fails at once; one the server
        # read and dropped would fail only when the shutdown times out.
        assert all(seconds < 1 for seconds in failed), failed
        assert "Traceback" not in server.log.read_text(), server.log_tail()
