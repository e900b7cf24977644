"""Every option value bakes into exactly its files, fully rendered and lint-clean."""

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from conftest import TEMPLATE_DIR, Bake

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
    {"package_name": LONG_PACKAGE},
]

COMMON_FILES = {
    ".gitignore",
    ".pre-commit-config.yaml",
    "README.md",
    "configs/default.yaml",
    "configs/tune.yaml",
    "pyproject.toml",
    "scripts/slurm.sbatch",
    "scripts/tune.sbatch",
    "tests/conftest.py",
    "tests/helper_callbacks.py",
    "tests/test_config.py",
    "tests/test_data.py",
    "tests/test_ddp.py",
    "tests/test_idx_files.py",
    "tests/test_images.py",
    "tests/test_nets.py",
    "tests/test_operations.py",
    "tests/test_resume.py",
    "tests/test_robustness.py",
    "tests/test_run_options.py",
    "tests/test_serve.py",
    "tests/test_train_predict.py",
    "tests/test_tune.py",
}

PACKAGE_FILES = {
    "__init__.py",
    "callbacks.py",
    "checkpoints.py",
    "data.py",
    "errors.py",
    "export.py",
    "hardware.py",
    "images.py",
    "model.py",
    "nets.py",
    "predict.py",
    "pruning.py",
    "report.py",
    "serve.py",
    "train.py",
    "tune.py",
}

LOGGER_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}

LEFTOVERS = ("{{", "{%", "cookiecutter.")


def answers_of(options: dict[str, str]) -> dict[str, str]:
    return {key: options.get(key, values[0]) for key, values in CHOICES.items()}


def expected_files(options: dict[str, str]) -> set[str]:
    answers = answers_of(options)
    package = options.get("package_name", "mnist_lab")
    files = COMMON_FILES | {f"src/{package}/{name}" for name in PACKAGE_FILES}
    if answers["license"] != "none":
        files.add("LICENSE")
    if answers["ci"] == "github":
        files.add(".github/workflows/ci.yml")
    if answers["docker"] == "yes":
        files |= {"Dockerfile", ".dockerignore"}
    if answers["dataset"] == "image_folder":  # its own data module, with its own tests
        files = (files - {"tests/test_idx_files.py"}) | {"tests/test_image_folder.py"}
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


def test_config_files_parse_and_follow_the_answers(baked: tuple[dict[str, str], Path]) -> None:
    options, project = baked
    answers = answers_of(options)
    pyproject = tomllib.loads((project / "pyproject.toml").read_text())
    assert pyproject["project"]["requires-python"] == f">={answers['python_version']}"
    dependencies = " ".join(pyproject["project"]["dependencies"])
    for logger, package in LOGGER_PACKAGES.items():
        assert (package in dependencies) == (answers["logger"] == logger), package
    assert pyproject["project"].get("license", "none") == answers["license"]
    for name in (".pre-commit-config.yaml", "configs/default.yaml", "configs/tune.yaml"):
        assert isinstance(yaml.safe_load((project / name).read_text()), dict)
    if answers["ci"] == "github":
        workflow = yaml.safe_load((project / ".github/workflows/ci.yml").read_text())
        steps = workflow["jobs"]["test"]["steps"]
        assert steps[1]["with"]["python-version"] == answers["python_version"]
        assert any(step.get("run") == "pytest" for step in steps)


def test_model_option_only_sets_the_configured_network(bake: Bake) -> None:
    networks = {"cnn": ("ConvNet", {"width", "dropout"}), "mlp": ("MLP", {"hidden_dim"})}
    for model, (class_name, settings) in networks.items():
        project = bake(model=model)
        net = yaml.safe_load((project / "configs/default.yaml").read_text())["model"]["net"]
        assert net["class_path"] == f"mnist_lab.nets.{class_name}"
        assert set(net["init_args"]) == settings
    cnn, mlp = bake(model="cnn"), bake(model="mlp")
    differ = {
        name for name in baked_files(cnn) if (cnn / name).read_bytes() != (mlp / name).read_bytes()
    }
    # The search space names the chosen network's settings too.
    assert differ == {"configs/default.yaml", "configs/tune.yaml", "README.md"}


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


def test_dockerfile_passes_hadolint(bake: Bake) -> None:
    dockerfile = bake(docker="yes") / "Dockerfile"
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
    assert differ == {"configs/default.yaml", "pyproject.toml", "README.md"}
    logger = yaml.safe_load((other / "configs/default.yaml").read_text())["trainer"]["logger"]
    assert logger["class_path"] == "pytorch_lightning.loggers.CSVLogger"


def test_other_dataset_changes_only_the_datamodule(bake: Bake) -> None:
    mnist, fashion = bake(), bake(dataset="fashion_mnist")
    differ = {
        name
        for name in baked_files(mnist)
        if (mnist / name).read_bytes() != (fashion / name).read_bytes()
    }
    assert differ == {"src/mnist_lab/data.py", "README.md"}
