"""What a search leaves in logs/tune/<study_name>/: best.yaml, trials.csv and two plots."""

import csv
import io
from pathlib import Path

import optuna
from jsonargparse import Namespace
from optuna.trial import FrozenTrial, TrialState

from ..support.files import replaced, write_file
from ..train import resolve
from .search import Search
from .study import FINISHED, with_values


def write_results(study: optuna.Study, search: Search, base: Namespace, results: Path) -> None:
    """Written by every worker when it stops, whole files only, from all the workers' trials:
    the last worker to stop leaves the complete results."""
    trials = study.get_trials(deepcopy=False)
    write_file(results / "trials.csv", trials_table(trials, search))
    finished = sum(trial.state in FINISHED for trial in trials)
    complete = [trial for trial in trials if trial.state == TrialState.COMPLETE]
    print(
        f"study {study.study_name}: {finished} of {search.n_trials} trials finished "
        f"({len(complete)} complete, {finished - len(complete)} pruned); results in {results}"
    )
    if not complete:
        return
    best = study.best_trial
    best_yaml = results / "best.yaml"
    config = with_values(base, best.params, search)
    write_file(
        best_yaml,
        f"# Trial {best.number} of the study {study.study_name}: {search.metric} {best.value:.6g}\n"
        f"# Retrain: python -m {__package__.rpartition('.')[0]}.train --config {best_yaml}\n"
        + resolve(config).parser.dump(config, skip_none=False),
    )
    print(f"best: trial {best.number}, {search.metric} {best.value:.6g}; {best_yaml}")
    write_plots(study, results, compare_parameters=len(complete) >= 2)


def trials_table(trials: list[FrozenTrial], search: Search) -> str:
    tested = sorted(
        {name for trial in trials for name in trial.user_attrs if name.startswith("test/")}
    )
    columns = ["number", "state", search.metric, "epochs", "seconds", *search.search_space, *tested]
    table = io.StringIO()
    writer = csv.writer(table)
    writer.writerow([*columns, "worker", "run_dir"])
    for trial in trials:
        seconds = trial.duration.total_seconds() if trial.duration else None
        writer.writerow(
            [
                trial.number,
                trial.state.name,
                trial.value,
                len(trial.intermediate_values),
                None if seconds is None else round(seconds, 1),
                *(trial.params.get(key) for key in search.search_space),
                *(trial.user_attrs.get(name) for name in tested),
                trial.user_attrs.get("worker"),
                trial.user_attrs.get("run_dir"),
            ]
        )
    return table.getvalue()


def write_plots(study: optuna.Study, results: Path, compare_parameters: bool) -> None:
    """Optuna's plots of the optimization history and, given two complete trials or more to
    compare, of the parameters' importances."""
    # Imported here: pyplot takes a while to import and is only needed at the end.
    from matplotlib import pyplot as plt
    from optuna.visualization import matplotlib as plots

    charts = {"optimization_history.png": plots.plot_optimization_history}
    if compare_parameters:
        charts["param_importances.png"] = plots.plot_param_importances
    for name, plot in charts.items():
        figure = plot(study).figure
        figure.tight_layout()  # room for the parameters' long names
        with replaced(results / name) as file:
            figure.savefig(file, format="png", dpi=100)
        plt.close(figure)
