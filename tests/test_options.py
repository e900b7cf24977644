"""Every option value bakes into exactly its files, fully rendered and lint-clean."""

import ast
import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from bakes import EVERY_OPTION, TEMPLATE_DIR, Bake

CHOICES = {
    key: value
    for key, value in json.loads((TEMPLATE_DIR / "cookiecutter.json").read_text()).items()
    if isinstance(value, list)
}

# A package name as long as the hooks allow: the bake must still lint clean, whatever wraps.
LONG_PACKAGE = "abcdefghij_klmnopqrst_uvwxyz_abcdefghijk"

# Each choice value once, the other answers at their defaults, and the longest package name.
OPTION_SETS = [
    {},
    *({key: value} for key, values in CHOICES.items() for value in values[1:]),
    {"package_name": LONG_PACKAGE, **EVERY_OPTION},
    {"dataset": "image_folder", **EVERY_OPTION},
    {"model": "backbone", "dataset": "image_folder", **EVERY_OPTION},
]

COMMON_FILES = {
    ".gitignore",
    ".pre-commit-config.yaml",
    "README.md",
    "pyproject.toml",
    "scripts/slurm.sbatch",
    "tests/conftest.py",
    "tests/helpers.py",
    "tests/test_compile.py",
    "tests/test_config.py",
    "tests/test_data_contract.py",
    "tests/test_ddp.py",
    "tests/test_export.py",
    "tests/test_files.py",
    "tests/test_idx_files.py",
    "tests/test_images.py",
    "tests/test_nets.py",
    "tests/test_operations.py",
    "tests/test_resume.py",
    "tests/test_robustness.py",
    "tests/test_run_options.py",
    "tests/test_train_predict.py",
}

# The package: the core at its top, what uses a trained model and the support beside it.
PACKAGE_FILES = {
    "__init__.py",
    "configs/default.yaml",
    "data.py",
    "model.py",
    "nets.py",
    "train.py",
    "inference/__init__.py",
    "inference/classifier.py",
    "inference/export.py",
    "inference/predict.py",
    "support/checkpoints.py",
    "support/errors.py",
    "support/files.py",
    "support/images.py",
    "support/loading.py",
    "support/process.py",
    "training/callbacks.py",
    "training/report.py",
    "training/length.py",
    "training/resume.py",
    "training/runs.py",
}

# The files of the two wings, in the package and beside it.
SERVE_FILES = {
    "package": {
        "inference/serve.py",
        "inference/server.py",
        "inference/api.py",
        "inference/processes.py",
        "inference/page.html",
    },
    "project": {
        "tests/serving.py",
        "tests/test_serve.py",
        "tests/test_page.py",
        "docs/serve-page.png",
    },
}
TUNE_FILES = {
    "package": {
        "configs/search.yaml",
        "tune/__init__.py",
        "tune/__main__.py",
        "tune/pruning.py",
        "tune/results.py",
        "tune/search.py",
        "tune/study.py",
    },
    "project": {"tests/test_tune.py", "scripts/tune.sbatch"},
}

LOGGER_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}

LEFTOVERS = ("{{", "{%", "cookiecutter.")


def answers_of(options: dict[str, str]) -> dict[str, str]:
    return {key: options.get(key, values[0]) for key, values in CHOICES.items()}


def expected_files(options: dict[str, str]) -> set[str]:
    answers = answers_of(options)
    package = options.get("package_name", "mnist_lab")
    files = set(COMMON_FILES)
    package_files = set(PACKAGE_FILES)
    for option, wing in (("serve", SERVE_FILES), ("tune", TUNE_FILES)):
        if answers[option] == "yes":
            files |= wing["project"]
            package_files |= wing["package"]
    files |= {f"src/{package}/{name}" for name in package_files}
    if answers["license"] != "none":
        files.add("LICENSE")
    if answers["ci"] == "github":
        files.add(".github/workflows/ci.yml")
    if answers["docker"] == "yes":
        files |= {"Dockerfile", ".dockerignore"}
    if answers["model"] == "backbone":  # the fine-tuning schedule, and its tests
        files |= {"tests/test_backbone.py", f"src/{package}/training/finetuning.py"}
    if answers["dataset"] == "image_folder":  # its own data module, with its own tests
        files = (files - {"tests/test_idx_files.py"}) | {
            "tests/test_image_folder.py",
            f"src/{package}/image_cache.py",
            f"src/{package}/image_files.py",
            f"src/{package}/augment.py",
        }
    return files


def baked_files(project: Path) -> set[str]:
    return {str(path.relative_to(project)) for path in project.rglob("*") if path.is_file()}


def option_id(options: dict[str, str]) -> str:
    return ",".join(f"{key}={value}" for key, value in options.items()) or "defaults"


@pytest.fixture(params=OPTION_SETS, ids=option_id)
def baked(request: pytest.FixtureRequest, bake: Bake) -> tuple[dict[str, str], Path]:
    return request.param, bake(**request.param)


def test_bakes_exactly_the_files_of_its_options(baked: tuple[dict[str, str], Path]) -> None:
    options, project = baked
    assert baked_files(project) == expected_files(options)


def test_no_template_syntax_is_left(baked: tuple[dict[str, str], Path]) -> None:
    _, project = baked
    for name in baked_files(project):
        if name.endswith(".png"):
            continue
        text = (project / name).read_text(encoding="utf-8")
        left = [marker for marker in LEFTOVERS if marker in text]
        assert not left, f"{name} still holds {left}"


def test_ruff_check_and_format_are_clean(baked: tuple[dict[str, str], Path]) -> None:
    _, project = baked
    for command in (["check", "--no-cache", "."], ["format", "--check", "--no-cache", "."]):
        completed = subprocess.run(
            [sys.executable, "-m", "ruff", *command], cwd=project, capture_output=True, text=True
        )
        assert completed.returncode == 0, completed.stdout + completed.stderr


# The package's floors, lowest first: a module imports only from floors below its own and from
# its own group. support/ is the ground every command stands on; the data layer and the
# networks stand on it alone; the model on those; training and inference on the model.
FLOORS = {
    "support": 0,
    "data": 1,  # data.py and, with image_folder, the modules it is split into
    "nets": 1,
    "model": 2,
    "training": 3,
    "inference": 3,
    "train": 4,
    "tune": 5,
}
DATA_LAYER = {"augment", "image_cache", "image_files"}


def group_of(module: str) -> str:
    top = module.split(".")[0]
    return "data" if top in DATA_LAYER else top


def package_imports(package: Path) -> dict[str, set[str]]:
    """Each module of the package (dotted, relative to it) -> the package modules it imports."""
    graph = {}
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(package).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        here = list(path.relative_to(package).parent.parts)
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ImportFrom):
                continue
            if node.level:
                base = here[: len(here) - node.level + 1]
                stem = [*base, *(node.module.split(".") if node.module else [])]
            elif (node.module or "").split(".")[0] == package.name:
                stem = node.module.split(".")[1:]
            else:
                continue
            for alias in node.names:
                named = [*stem, alias.name]
                is_module = (package / Path(*named)).with_suffix(".py").is_file()
                targets.add(".".join(named if is_module else stem))
        graph[module] = targets - {""}
    return graph


def test_no_import_runs_back_up(baked: tuple[dict[str, str], Path]) -> None:
    _, project = baked
    [package] = project.glob("src/*/__init__.py")
    graph = package_imports(package.parent)
    assert "support.checkpoints" in graph["inference.classifier"]  # the graph was read
    upward = [
        f"{module} -> {target}"
        for module, targets in graph.items()
        if module
        for target in targets
        if group_of(target) != group_of(module)
        and FLOORS[group_of(target)] >= FLOORS[group_of(module)]
    ]
    assert not upward, "imports that run back up:\n" + "\n".join(upward)


def config_of(project: Path, name: str = "default.yaml") -> dict:
    [path] = project.glob(f"src/*/configs/{name}")
    return yaml.safe_load(path.read_text())


def test_config_files_parse_and_follow_the_answers(baked: tuple[dict[str, str], Path]) -> None:
    options, project = baked
    answers = answers_of(options)
    pyproject = tomllib.loads((project / "pyproject.toml").read_text())
    assert pyproject["project"]["requires-python"] == f">={answers['python_version']}"
    dependencies = " ".join(pyproject["project"]["dependencies"])
    for logger, package in LOGGER_PACKAGES.items():
        assert (package in dependencies) == (answers["logger"] == logger), package
    assert ("timm" in dependencies) == (answers["model"] == "backbone")
    assert pyproject["project"].get("license", "none") == answers["license"]
    extras = pyproject["project"]["optional-dependencies"]
    scripts = pyproject["project"]["scripts"]
    for wing in ("serve", "tune"):
        chosen = answers[wing] == "yes"
        assert (wing in extras) == chosen and (wing in extras["dev"][0]) == chosen, wing
        assert any(name.endswith(f"-{wing}") for name in scripts) == chosen, wing
    assert isinstance(yaml.safe_load((project / ".pre-commit-config.yaml").read_text()), dict)
    for name in ("default.yaml", *(["search.yaml"] if answers["tune"] == "yes" else [])):
        assert isinstance(config_of(project, name), dict)
    if answers["ci"] == "github":
        workflow = yaml.safe_load((project / ".github/workflows/ci.yml").read_text())
        steps = workflow["jobs"]["test"]["steps"]
        assert steps[1]["with"]["python-version"] == answers["python_version"]
        assert any(step.get("run", "").startswith("pytest") for step in steps)


# What belongs to one wing: its modules, commands, extras and the words for what it does. A
# bake without the wing must mention none of them, anywhere in its files (`re.search` is Python's
# regular expressions, not the search).
WING_MENTIONS = {
    "serve": re.compile(r"LitServe|FastAPI|uvicorn|\bserv(e|es|ed|ing|ers)\b|page\.html|\[serve\]"),
    "tune": re.compile(
        r"Optuna|(?<![Ff]ine-)\btun(e|es|ed|ing)\b|(?<!re\.)\bsearch(es)?\b|\btrials?\b|\[tune\]"
    ),
}


def wing_mentions(project: Path, wing: str) -> list[str]:
    """Every line of the bake's text files that mentions ``wing``, as file:line: text."""
    found = []
    for name in sorted(baked_files(project)):
        if name.endswith(".png"):
            continue
        lines = (project / name).read_text(encoding="utf-8").splitlines()
        for number, line in enumerate(lines, 1):
            if WING_MENTIONS[wing].search(line):
                found.append(f"{name}:{number}: {line.strip()}")
    return found


@pytest.mark.parametrize(
    "wings",
    [{}, {"serve": "yes"}, {"tune": "yes"}, {"docker": "yes"}, {"model": "backbone"}],
    ids=option_id,
)
def test_no_bake_mentions_a_wing_it_does_not_have(bake: Bake, wings: dict[str, str]) -> None:
    project = bake(**wings)
    for wing in WING_MENTIONS:
        mentions = wing_mentions(project, wing)
        if wings.get(wing) == "yes":
            assert mentions, f"the {wing} wing is chosen but never mentioned"
        else:
            assert not mentions, f"a bake without {wing} mentions it:\n" + "\n".join(mentions)


def test_model_option_only_sets_the_configured_network(bake: Bake) -> None:
    networks = {
        "cnn": ("ConvNet", {"width", "dropout"}),
        "mlp": ("MLP", {"hidden_dim", "dropout"}),
        "backbone": ("Backbone", {"name", "pretrained", "weights_file", "backbone_lr_ratio"}),
    }
    for model, (class_name, settings) in networks.items():
        net = config_of(bake(model=model))["model"]["net"]
        assert net["class_path"] == f"mnist_lab.nets.{class_name}"
        assert set(net["init_args"]) == settings
    cnn, mlp = bake(model="cnn"), bake(model="mlp")
    differ = {
        name for name in baked_files(cnn) if (cnn / name).read_bytes() != (mlp / name).read_bytes()
    }
    assert differ == {"src/mnist_lab/configs/default.yaml", "README.md"}
    searched = config_of(bake(model="mlp", tune="yes"), "search.yaml")["search_space"]
    assert "model.net.init_args.hidden_dim" in searched, "the search space names its settings"


BACKBONE_MENTIONS = re.compile(r"timm|backbone|finetun|fine-tun", re.IGNORECASE)


@pytest.mark.parametrize("dataset", ["mnist", "image_folder"])
def test_only_backbone_bakes_have_the_backbone(bake: Bake, dataset: str) -> None:
    for model in ("cnn", "mlp"):
        project = bake(model=model, dataset=dataset)
        found = [
            f"{name}: {line.strip()}"
            for name in sorted(baked_files(project))
            if not name.endswith(".png")
            for line in (project / name).read_text(encoding="utf-8").splitlines()
            if BACKBONE_MENTIONS.search(line)
        ]
        assert not found, f"a {model} bake mentions the backbone:\n" + "\n".join(found)
    config = config_of(bake(model="backbone", dataset=dataset))
    assert config["model"]["net"]["init_args"]["name"] == "resnet18"
    callbacks = [callback["class_path"] for callback in config["trainer"]["callbacks"]]
    assert "mnist_lab.training.finetuning.FreezeBackbone" in callbacks


def test_license_file_matches_the_choice(bake: Bake) -> None:
    first_lines = {
        "MIT": "MIT License",
        "BSD-3-Clause": "BSD 3-Clause License",
        "Apache-2.0": "Copyright",
    }
    for license_id, first_line in first_lines.items():
        text = (bake(license=license_id) / "LICENSE").read_text()
        assert text.startswith(first_line) and "Your Name" in text
    assert "Apache License" in (bake(license="Apache-2.0") / "LICENSE").read_text()


@pytest.mark.parametrize("serve", ["no", "yes"])
def test_dockerfile_passes_hadolint(bake: Bake, serve: str) -> None:
    dockerfile = bake(docker="yes", serve=serve) / "Dockerfile"
    hadolint = Path(sys.executable).parent / "hadolint"
    completed = subprocess.run([hadolint, dockerfile], capture_output=True, text=True)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "ENTRYPOINT" in dockerfile.read_text()


def test_logger_option_only_sets_the_configured_logger(bake: Bake) -> None:
    default, other = bake(), bake(logger="csv")
    differ = {
        name
        for name in baked_files(default)
        if (default / name).read_bytes() != (other / name).read_bytes()
    }
    assert differ == {"src/mnist_lab/configs/default.yaml", "pyproject.toml", "README.md"}
    logger = config_of(other)["trainer"]["logger"]
    assert logger["class_path"] == "pytorch_lightning.loggers.CSVLogger"


def test_other_dataset_changes_only_the_datamodule(bake: Bake) -> None:
    mnist, fashion = bake(), bake(dataset="fashion_mnist")
    differ = {
        name
        for name in baked_files(mnist)
        if (mnist / name).read_bytes() != (fashion / name).read_bytes()
    }
    assert differ == {"src/mnist_lab/data.py", "README.md"}


def test_both_data_modules_state_the_same_data_contract(bake: Bake) -> None:
    # Each bake has one data module, which carries the contract in its docstring for the user
    # who replaces it; the template's two copies must not drift apart.
    start = "This module is the one place that knows the data."
    end = "learn above 90 % test accuracy in two epochs."
    contracts = []
    for project in (bake(), bake(dataset="image_folder")):
        text = (project / "src" / "mnist_lab" / "data.py").read_text()
        contracts.append(text[text.index(start) : text.index(end)])
    assert contracts[0] == contracts[1]
