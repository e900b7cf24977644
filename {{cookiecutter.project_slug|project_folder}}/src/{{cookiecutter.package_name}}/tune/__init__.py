r"""The hyperparameter search, on Optuna; each trial is a normal training run of this project.

    python -m {{ cookiecutter.package_name }}.tune \
        [--search my_search.yaml] [--storage URL] [train arguments]

The search file (default: ``configs/search.yaml`` of the package) holds the search space (config
keys and their distributions), the metric and its direction, the pruner and the number of
trials. The train arguments make the config every trial starts from. The study lives in
``--storage``; running the same command again continues it until it has ``n_trials`` finished
(complete or pruned) trials, and processes given the same storage share the work. Results go
to ``logs/tune/<study_name>/``: ``best.yaml`` (``train --config best.yaml`` retrains the best
trial), ``trials.csv``, two plots and one run folder per trial.
"""
