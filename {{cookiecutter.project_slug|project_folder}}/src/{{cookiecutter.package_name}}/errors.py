"""Errors whose message tells the user what to fix; the entry points print them as one line."""


class UserError(Exception):
    """Input, data or a checkpoint that cannot be used; no traceback needed."""


class ConfigError(UserError):
    """A setting or argument that cannot be used, such as a value out of its range."""


class DatasetError(UserError):
    """Data that is missing or unusable."""


class ImageError(UserError):
    """An input that is not a usable image."""


class CheckpointError(UserError):
    """A checkpoint that is missing, unsafe, or made for another model or other data."""


class NonFiniteLossError(UserError, FloatingPointError):
    """The training loss became NaN or infinite."""
