"""The trained classifier of a checkpoint, for the commands that use one."""

from functools import partial
from pathlib import Path
from typing import Any

from ..model import DATA_FACTS, ImageClassifier
from ..nets import network_class{% if cookiecutter.model == "backbone" %}, weights_from_checkpoint{% endif %}
from ..support.checkpoints import read_checkpoint
from ..support.errors import CheckpointError, UserError, one_line


def load_classifier(path: str | Path) -> tuple[ImageClassifier, dict[str, Any]]:
    """The model of a checkpoint written by training, in eval mode, and the checkpoint itself
    (read once, as plain data). Anything else is refused with a one-line error."""
    checkpoint = read_checkpoint(path)
    hparams = checkpoint.get("hyper_parameters", {})
    missing = [name for name in (*DATA_FACTS, "net") if name not in hparams]
    if missing:
        raise CheckpointError(
            f"{path} holds a different model than this project's (no {', '.join(missing)})"
        )
    try:
        net = hparams["net"]
        net_class = network_class(str(net.get("class_path", "")))
{%- if cookiecutter.model == "backbone" %}
        # The checkpoint holds every weight: no download, no weights file needed any more.
        with weights_from_checkpoint():
            model = ImageClassifier(
                **{fact: hparams[fact] for fact in DATA_FACTS},
                net=partial(net_class, **net.get("init_args", {})),
            )
{%- else %}
        model = ImageClassifier(
            **{fact: hparams[fact] for fact in DATA_FACTS},
            net=partial(net_class, **net.get("init_args", {})),
        )
{%- endif %}
        model.load_state_dict(checkpoint["state_dict"])
    except (UserError, AttributeError, KeyError, RuntimeError, TypeError, ValueError) as error:
        raise CheckpointError(
            f"{path} does not fit this project's model: {one_line(error)}"
        ) from error
    return model.eval(), checkpoint
