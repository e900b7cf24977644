"""The trained classifier of a checkpoint, for the commands that use one."""

from functools import partial
from pathlib import Path
from typing import Any

from ..model import DATA_FACTS, ImageClassifier
from ..support.checkpoints import network_class, read_checkpoint
from ..support.errors import CheckpointError, UserError, one_line


def load_classifier(path: str | Path) -> tuple[ImageClassifier, dict[str, Any]]:
    """The model of a checkpoint written by training, in eval mode, and the checkpoint itself
    (read once, as plain data). Anything else is refused with a one-line error."""
    checkpoint = read_checkpoint(path)
    net_class, net_settings = network_class(path, checkpoint)
    hparams = checkpoint["hyper_parameters"]
    try:
        model = ImageClassifier(
            **{fact: hparams[fact] for fact in DATA_FACTS}, net=partial(net_class, **net_settings)
        )
        model.load_state_dict(checkpoint["state_dict"])
    except (UserError, KeyError, RuntimeError, TypeError, ValueError) as error:
        raise CheckpointError(
            f"{path} does not fit this project's model: {one_line(error)}"
        ) from error
    return model.eval(), checkpoint
