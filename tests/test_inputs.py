"""Invalid answers are refused before anything is written; awkward valid ones render."""

import ast
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from bakes import TEMPLATE_DIR
from cookiecutter.exceptions import FailedHookException


def dependency_modules() -> dict[str, tuple[str, ...]]:
    """The hook's table of dependencies and their modules (the hook itself holds Jinja)."""
    hook = (TEMPLATE_DIR / "hooks" / "pre_gen_project.py").read_text()
    table = re.search(r"^DEPENDENCY_MODULES = (\{.*?^\})", hook, flags=re.S | re.M)
    return ast.literal_eval(table.group(1))


DEPENDENCY_NAMES = sorted(
    {module.lower() for modules in dependency_modules().values() for module in modules}
    - {"pil"}  # not a lowercase identifier either way
)

BAD_ANSWERS = [
    ({"package_name": "1abc"}, "is not a lowercase Python identifier"),
    ({"package_name": "my-pkg"}, "is not a lowercase Python identifier"),
    ({"package_name": "My_Pkg"}, "is not a lowercase Python identifier"),
    ({"package_name": ""}, "is not a lowercase Python identifier"),
    ({"package_name": "class"}, "is a Python keyword"),
    ({"package_name": "import"}, "is a Python keyword"),
    ({"package_name": "torch"}, "would shadow the module 'torch'"),
    ({"package_name": "lightning"}, "would shadow the module 'lightning'"),
    ({"package_name": "pytorch_lightning"}, "would shadow the module 'pytorch_lightning'"),
    ({"package_name": "torchvision"}, "would shadow the module 'torchvision'"),
    ({"package_name": "torchmetrics"}, "would shadow the module 'torchmetrics'"),
    ({"package_name": "test"}, "would shadow the module 'test'"),
    ({"package_name": "os"}, "would shadow the module 'os'"),
    ({"package_name": "site"}, "would shadow the module 'site'"),
    ({"package_name": "a" * 41}, "has 41 characters, more than 40"),
    ({"project_slug": "a" * 65}, "has 65 characters, more than 64"),
    ({"project_name": "A very long project name " * 12}, "more than 64: choose a shorter"),
    ({"project_slug": "../evil"}, "project_slug '../evil' is not a valid folder"),
    ({"project_slug": "a/b"}, "project_slug 'a/b' is not a valid folder"),
    ({"project_slug": "a\\b"}, "is not a valid folder"),
    ({"project_slug": " lead"}, "project_slug ' lead' is not a valid folder"),
    ({"project_slug": "my lab"}, "project_slug 'my lab' is not a valid folder"),
    ({"project_slug": ".hidden"}, "project_slug '.hidden' is not a valid folder"),
    ({"project_slug": ""}, "project_slug '' is not a valid folder"),
    ({"author_email": "nobody.example.com"}, "is not an e-mail address"),
]


def left_in(folder: Path) -> list[Path]:
    """Everything under ``folder`` but the empty per-bake output folders pytest-cookies makes."""
    return [p for p in folder.rglob("*") if not (p.is_dir() and p.name.startswith("bake"))]


@pytest.mark.parametrize(("answers", "message"), BAD_ANSWERS, ids=lambda v: repr(v)[:40])
def test_bad_answer_is_refused_with_one_line_and_nothing_written(
    cookies, tmp_path: Path, capfd: pytest.CaptureFixture[str], answers: dict, message: str
) -> None:
    result = cookies.bake(extra_context=answers, template=str(TEMPLATE_DIR))
    assert result.exit_code == -1
    assert isinstance(result.exception, FailedHookException)
    errors = [line for line in capfd.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], errors
    assert left_in(tmp_path / "cookies") == []
    assert left_in(tmp_path) == [tmp_path / "cookies"]


@pytest.mark.parametrize("name", DEPENDENCY_NAMES)
def test_package_named_like_a_dependency_is_refused(cookies, name: str) -> None:
    result = cookies.bake(extra_context={"package_name": name}, template=str(TEMPLATE_DIR))
    assert result.exit_code == -1 and isinstance(result.exception, FailedHookException), name


@pytest.mark.parametrize("logger", ["tensorboard", "wandb", "mlflow"])
def test_every_declared_dependency_is_in_the_hook_table(bake, logger: str) -> None:
    table = {name.lower() for name in dependency_modules()}
    pyproject = tomllib.loads((bake(logger=logger) / "pyproject.toml").read_text())
    project = pyproject["project"]
    declared = [*project["dependencies"], *pyproject["build-system"]["requires"]]
    declared += [item for extra in project["optional-dependencies"].values() for item in extra]
    for requirement in declared:
        name = re.match(r"[A-Za-z0-9_.-]+", requirement).group().lower()
        assert name in table or name == project["name"], f"{name} is not in DEPENDENCY_MODULES"


def test_unknown_choice_value_is_refused(cookies) -> None:
    result = cookies.bake(extra_context={"model": "resnet"}, template=str(TEMPLATE_DIR))
    assert result.exit_code == -1
    assert "resnet" in str(result.exception) and "cnn" in str(result.exception)


def test_command_line_refusal_prints_the_reason_and_writes_nothing(tmp_path: Path) -> None:
    output = tmp_path / "out"
    output.mkdir()
    command = [
        "cookiecutter",
        "--no-input",
        "-o",
        str(output),
        str(TEMPLATE_DIR),
        "project_slug=a/b",
    ]
    completed = subprocess.run([sys.executable, "-m", *command], capture_output=True, text=True)
    assert completed.returncode != 0
    # The hook's reason is the only line on stderr; cookiecutter logs its own notice to stdout.
    [reason] = completed.stderr.splitlines()
    assert reason.startswith("error: project_slug 'a/b' is not a valid folder")
    assert list(output.iterdir()) == []


AWKWARD = {
    "project_name": 'Digit Lab "Ünïcode" O\'Brien',
    "author_name": 'Zoë "Z" O\'Connor \\ Jr.',
    "author_email": "zoë+lab@exämple.org",
    "description": "Classifies digits: \"quotes\", 'apostrophes', back\\slashes \\n and ünïcode.",
}


def test_awkward_answers_render_valid_files(bake) -> None:
    project = bake(**AWKWARD)
    assert project.name == "digit-lab-unicode-o-brien"
    package = project / "src" / "digit_lab_unicode_o_brien"
    assert package.is_dir()
    pyproject = tomllib.loads((project / "pyproject.toml").read_text(encoding="utf-8"))
    assert pyproject["project"]["description"] == AWKWARD["description"]
    assert pyproject["project"]["authors"] == [
        {"name": AWKWARD["author_name"], "email": AWKWARD["author_email"]}
    ]
    for path in project.rglob("*.yaml"):
        yaml.safe_load(path.read_text(encoding="utf-8"))
    for path in project.rglob("*.yml"):
        yaml.safe_load(path.read_text(encoding="utf-8"))
    for path in project.rglob("*.py"):
        ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    readme = (project / "README.md").read_text(encoding="utf-8")
    assert readme.startswith(f"# {AWKWARD['project_name']}\n")
    assert AWKWARD["author_name"] in (project / "LICENSE").read_text(encoding="utf-8")
