"""Every file the commands write is the old one or the complete new one, whatever happens."""

import contextlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO

from .errors import OutputError, one_line


def check_output(path: Path, inputs: dict[str, Sequence[Path]] | None = None) -> None:
    """Refuse to write over anything but a regular file (a device, a folder, a link), or over
    one of the command's own inputs, whatever path names it: ``inputs`` maps what they are
    (e.g. "the checkpoint") to their paths."""
    if path.exists():
        output = path.stat()
        for role, paths in (inputs or {}).items():
            if any(is_file_of(output, source) for source in paths):
                raise OutputError(f"--output {path} is {role}: choose another output path")
    if path.is_symlink() or (path.exists() and not path.is_file()):
        raise OutputError(f"{path} exists and is not a regular file: give another output path")


def is_file_of(stat: os.stat_result, path: Path) -> bool:
    """Whether ``path`` leads to the file ``stat`` describes (by a link, another spelling)."""
    try:
        return os.path.samestat(stat, path.stat())
    except OSError:  # missing or unreadable: not the file, and the command reports it
        return False


@contextlib.contextmanager
def replaced(path: Path) -> Iterator[IO[bytes]]:
    """A file to write ``path`` through: written beside it, flushed to disk and renamed over
    ``path`` when the block ends without an error, removed when it fails.

    On the same file system a rename is atomic, so a reader, a kill or a power cut never sees
    half a file; the process id in the name keeps writers in parallel apart.
    """
    check_output(path)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial{path.suffix}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with partial.open("wb") as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        partial.replace(path)
    except BaseException as error:
        with contextlib.suppress(OSError):  # e.g. never created: the folder is not one
            partial.unlink(missing_ok=True)
        # A full disk, a read-only folder: torch.save reports the OSError as its context.
        cause = error if isinstance(error, OSError) else error.__cause__ or error.__context__
        if isinstance(cause, OSError):
            raise OutputError(
                f"cannot write {path}: {cause.strerror or one_line(cause)}"
            ) from error
        raise
    sync_folder(path.parent)
    remove_stale_partials(path)


def write_file(path: Path, content: str | bytes) -> None:
    with replaced(path) as file:
        file.write(content.encode() if isinstance(content, str) else content)


def remove_stale_partials(path: Path) -> None:
    """Partial files of ``path`` that killed processes left behind."""
    for partial in path.parent.glob(f".{path.name}.*.partial{path.suffix}"):
        pid = partial.name.removeprefix(f".{path.name}.").split(".")[0]
        if pid.isdigit() and not process_exists(int(pid)):
            partial.unlink(missing_ok=True)


def process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0 only checks; PermissionError: another user's process
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def sync_folder(folder: Path) -> None:
    """Flush a folder's entries (a rename) to disk, where the system allows it."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
    except OSError:
        pass
