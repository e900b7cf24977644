"""The search file: what to search, read by jsonargparse against the typed fields of
``Search``, so every mistake in it is named by the parser, in one line."""

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import optuna
import yaml
from jsonargparse import ArgumentParser
from jsonargparse.typing import PositiveInt
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.pruners import BasePruner
from optuna.samplers import BaseSampler

from ..support.errors import ConfigError

DEFAULT_SEARCH = Path(__file__).parents[1] / "configs" / "search.yaml"
Distribution = FloatDistribution | IntDistribution | CategoricalDistribution


@dataclass
class Search:
    """The fields of a search file (see configs/search.yaml for each one's meaning)."""

    study_name: str
    n_trials: PositiveInt
    metric: str
    direction: Literal["maximize", "minimize"]
    # Config keys, as `train --print_config` shows them, and their distributions.
    search_space: dict[str, Distribution]
    pruner: BasePruner
    sampler: BaseSampler | None = None
    heartbeat_interval: PositiveInt | None = 60


def load_search(path: Path) -> Search:
    """Read and check a search file; every problem is a one-line ConfigError."""
    try:
        fields = yaml.safe_load(path.read_text())
    except OSError as error:
        raise ConfigError(f"cannot read the search file {path}: {error.strerror}") from error
    except yaml.YAMLError as error:
        raise ConfigError(f"{path} is not valid YAML: {' '.join(str(error).split())}") from error
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(Search, "search")
    try:
        search = parser.instantiate(parser.parse_object({"search": fields})).search
    except Exception as error:  # the parser's errors, and the distributions' own checks
        raise ConfigError(f"{path}: {parser_message(error)}") from None
    if Path(search.study_name).name != search.study_name:
        raise ConfigError(f"{path}: study_name names a folder of logs/tune: no '/' or '..'")
    if not search.search_space:
        raise ConfigError(f"{path}: search_space is empty")
    return search


def parser_message(error: Exception) -> str:
    """jsonargparse's message in one line: for a value that fits none of several types, the
    reason it gives for the first."""
    message = " ".join(str(error).split()).replace('Parser key "search.', 'key "')
    head, _, reasons = message.partition(" Errors: - ")
    return (
        f"{head.partition(' Does not validate')[0]} {reasons.split(' - ')[0]}"
        if reasons
        else message
    )


def ends(distribution: Distribution) -> list:
    """The values training must accept for the whole range to be searchable."""
    if isinstance(distribution, CategoricalDistribution):
        return list(distribution.choices)
    return [distribution.low, distribution.high]


def suggest(trial: optuna.Trial, key: str, distribution: Distribution) -> object:
    if isinstance(distribution, CategoricalDistribution):
        return trial.suggest_categorical(key, distribution.choices)
    kind = trial.suggest_int if isinstance(distribution, IntDistribution) else trial.suggest_float
    return kind(
        key, distribution.low, distribution.high, log=distribution.log, step=distribution.step
    )
