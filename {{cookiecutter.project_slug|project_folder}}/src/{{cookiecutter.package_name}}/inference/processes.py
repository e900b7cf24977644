"""The server's processes among themselves: how the answers reach the HTTP processes, and a
lifetime bound to the server's main process."""

import asyncio
import ctypes
import logging
import multiprocessing
import os
import pickle
import signal
import struct
import sys
from multiprocessing.connection import Connection
from typing import Any

from fastapi import HTTPException
from litserve.transport.base import MessageTransport
from litserve.utils import LitAPIStatus, LoopResponseType

from ..support.errors import one_line

logger = logging.getLogger(__name__)

SIZE = struct.Struct("!Q")  # the length of the message that follows it in a pipe
STATUSES = {LitAPIStatus.START, LitAPIStatus.OK, LitAPIStatus.ERROR, LitAPIStatus.FINISH_STREAMING}
# Linux's prctl (sys/prctl.h), looked up here and not in a child right after a fork.
PRCTL = ctypes.CDLL(None, use_errno=True).prctl if sys.platform == "linux" else None
PR_SET_PDEATHSIG = 1


class PipeTransport(MessageTransport):
    """LitServe's answers, from the model workers to the HTTP process that holds the request:
    one anonymous pipe per HTTP process, its write end shared by the model workers under a lock.

    A pipe has no name: only the server's processes hold it, and it is gone with them however
    they end. It stands in for LitServe's ZeroMQ broker (``fast_queue``), which binds
    ``ipc:///tmp/zmq-<uuid>.ipc`` sockets without authentication and unpickles whatever
    arrives on them: any process of the user (of any user, under umask 000) could read every
    answer or run code in the server. The fix belongs upstream (``Broker`` and
    ``BaseConsumer._parse_message`` in src/litserve/transport/zmq_queue.py,
    ``generate_random_zmq_address`` in src/litserve/utils.py). LitServe's other transport
    polls multiprocessing manager queues from a thread, a thread hop per answer. The requests
    go through that manager, whose socket lies in a folder of the user's own (0700) and which
    asks for the server's authentication key before it reads anything.

    The HTTP process reads its pipe in its event loop, never blocking it on half a message
    (``Connection.recv_bytes`` would: the connections are only what carries a pipe into the
    spawned model workers). The request's id is pickled apart from its answer, so that an
    answer that cannot be read still names its request, which gets a 500. Anything else it
    cannot read is logged and skipped: an error that reaches LitServe's loop ends it for good,
    and every later answer with it (``response_queue_to_buffer`` in src/litserve/server.py
    upstream).
    """

    def __init__(
        self, writers: list[Connection], lock: Any, readers: list[Connection] | None = None
    ) -> None:
        self.writers, self.lock, self.readers = writers, lock, readers or []
        self.stream: asyncio.StreamReader | None = None

    @classmethod
    def for_consumers(cls, count: int) -> "PipeTransport":
        pipes = [multiprocessing.Pipe(duplex=False) for _ in range(count)]
        # The model workers are spawned processes: a lock of that context reaches them.
        lock = multiprocessing.get_context("spawn").Lock()
        return cls([writer for _, writer in pipes], lock, [reader for reader, _ in pipes])

    def __reduce__(self) -> tuple:
        return type(self), (self.writers, self.lock)  # the model workers write, never read

    def send(self, item: Any, consumer_id: int) -> None:
        uid, answer = item
        message = pickle.dumps((uid, pickle.dumps(answer)))
        data = memoryview(SIZE.pack(len(message)) + message)
        with self.lock:
            while data:
                data = data[os.write(self.writers[consumer_id].fileno(), data) :]

    async def areceive(self, consumer_id: int, timeout: float | None = None) -> tuple:
        """The next answer for this HTTP process; ``timeout`` bounds the wait for it to start."""
        if self.stream is None:
            self.stream = asyncio.StreamReader()
            protocol = asyncio.StreamReaderProtocol(self.stream)
            loop = asyncio.get_running_loop()
            await loop.connect_read_pipe(lambda: protocol, self.readers[consumer_id])
        while True:
            size = await asyncio.wait_for(self.stream.readexactly(SIZE.size), timeout)
            answer = read_answer(await self.stream.readexactly(SIZE.unpack(size)[0]))
            if answer is not None:
                return answer


def read_answer(message: bytes) -> tuple | None:
    """A message as LitServe's loop takes it, ``(uid, (data, status, kind, worker_id))``, or
    None for one that is not; one whose answer cannot be read answers its request 500."""
    try:
        uid, answer = pickle.loads(message)
        if not isinstance(uid, str) or not isinstance(answer, bytes):
            raise TypeError(f"a message of {type(uid).__name__} and {type(answer).__name__}")
    except Exception as error:
        logger.error("skipped a message of a model worker: %s", one_line(error))
        return None
    try:
        data, status, kind, worker_id = pickle.loads(answer)
        if status not in STATUSES or not isinstance(kind, LoopResponseType):
            raise TypeError(f"status {status!r} and kind {kind!r}")
        return uid, (data, status, kind, int(worker_id))
    except Exception as error:
        logger.error("the answer to request %s cannot be read: %s", uid, one_line(error))
        failed = HTTPException(500, "the server could not read the model's answer")
        return uid, (failed, LitAPIStatus.ERROR, LoopResponseType.REGULAR, -1)


def die_with_parent(parent: int, signum: int = signal.SIGKILL) -> None:
    """On Linux, have the kernel send this process ``signum`` when its parent ends, however it
    ends (precisely: when the parent's thread that started this process ends). Elsewhere,
    nothing."""
    if PRCTL is None:
        return
    PRCTL(PR_SET_PDEATHSIG, signum)
    if os.getppid() != parent:  # the parent ended before: nothing will send the signal
        os.kill(os.getpid(), signum)
