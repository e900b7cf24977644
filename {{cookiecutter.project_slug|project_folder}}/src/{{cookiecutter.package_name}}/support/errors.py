"""The errors the commands report in one line, and the one place that reports them."""

import importlib
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType

import torch
from pytorch_lightning.utilities.exceptions import MisconfigurationException, SIGTERMException


class UserError(Exception):
    """A problem the user can fix from its message alone: no traceback needed."""


class ConfigError(UserError):
    """A setting or argument that cannot be used, such as a value out of its range."""


class DatasetError(UserError):
    """Data that is missing or unusable, or a data module that breaks the data contract."""


class ImageError(UserError):
    """An input that is not a usable image."""


class CheckpointError(UserError):
    """A checkpoint that is missing, unsafe, or made for another model or other data."""


class OutputError(UserError):
    """A file that cannot be written where asked."""


class NonFiniteLossError(UserError, FloatingPointError):
    """The training loss became NaN or infinite."""


class MissingExtraError(UserError):
    """A feature whose optional dependencies are not installed."""


def require(module: str, extra: str, feature: str) -> ModuleType:
    """Import an optional dependency, or say which extra of the project installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtraError(
            f'{feature} needs {module}, which is not installed: pip install -e ".[{extra}]"'
        ) from None


def one_line(error: BaseException) -> str:
    """The first non-empty line of an error's message, or its type's name. For an error that a
    DataLoader worker process raised, the line of the original error."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if len(lines) > 1 and lines[1].startswith("Original Traceback"):
        return lines[-1].partition(": ")[2] or lines[-1]
    return lines[0] if lines else type(error).__name__


@contextmanager
def exit_in_one_line() -> Iterator[None]:
    """End the process with one line on stderr (exit status 1) on an error the user can fix,
    a stop by SIGTERM, or the loss of another process of a DDP run.

    Lightning's own configuration errors (e.g. a GPU asked for where there is none) are
    already worded for the user, so they count too.
    """
    try:
        yield
    except (UserError, MisconfigurationException) as error:
        sys.exit(f"error: {one_line(error)}")
    except SIGTERMException:
        sys.exit("stopped by SIGTERM")
    except RuntimeError as error:
        if not lost_a_process(error):
            raise
        reason = one_line(error).rpartition("] ")[2]
        sys.exit(f"error: a process of this run stopped, so this one cannot go on: {reason}")


def lost_a_process(error: RuntimeError) -> bool:
    """Whether a DDP collective failed because another process of the run is gone: the
    collectives of every other process then fail."""
    if isinstance(error, torch.distributed.DistError):
        return True
    return any(backend in str(error) for backend in ("gloo/transport", "NCCL"))
