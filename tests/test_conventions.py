"""The baked project's tooling works offline-capable, and CI runs what the READMEs say."""

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml
from bakes import EVERY_OPTION, TEMPLATE_DIR, Bake

GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "Template Test",
    "GIT_AUTHOR_EMAIL": "test@example.com",
    "GIT_COMMITTER_NAME": "Template Test",
    "GIT_COMMITTER_EMAIL": "test@example.com",
}


def run(*command: str, cwd: Path, env: dict[str, str] | None = None) -> str:
    completed = subprocess.run(
        command,
        cwd=cwd,
        env={**os.environ, **GIT_IDENTITY, **(env or {})},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert completed.returncode == 0, (
        f"{command}:\n{completed.stdout[-3000:]}{completed.stderr[-3000:]}"
    )
    return completed.stdout


def commit_all(repo: Path, message: str) -> None:
    run("git", "add", "-A", cwd=repo)
    run("git", "commit", "-q", "-m", message, cwd=repo)


def workflow_commands(path: Path) -> list[str]:
    workflow = yaml.safe_load(path.read_text())
    steps = [step for job in workflow["jobs"].values() for step in job["steps"]]
    return [line.strip() for step in steps for line in step.get("run", "").splitlines() if line]


def readme_commands(path: Path) -> str:
    blocks = re.findall(r"```bash\n(.*?)```", path.read_text(), flags=re.S)
    return "\n".join(blocks)


def test_ci_runs_the_readme_test_command() -> None:
    readme = readme_commands(TEMPLATE_DIR / "README.md")
    ci_lines = (TEMPLATE_DIR / ".ci" / "run").read_text().strip().splitlines()
    assert ci_lines[-1] in readme.splitlines()
    for command in workflow_commands(TEMPLATE_DIR / ".github" / "workflows" / "ci.yml"):
        if not command.startswith((".venv/bin/ruff", "python -m venv", ".venv/bin/python -m pip")):
            assert command in readme, command


def test_project_workflow_runs_its_readme_commands(bake: Bake) -> None:
    project = bake()
    readme = readme_commands(project / "README.md")
    commands = workflow_commands(project / ".github" / "workflows" / "ci.yml")
    assert commands == [
        'pip install -e ".[dev]"',
        "ruff check .",
        "ruff format --check .",
        'pytest -m "slow or not slow"',
    ]
    for command in commands:
        assert command in readme, command


@pytest.mark.slow
def test_pre_commit_hooks_pass_on_a_fresh_bake(bake: Bake, tmp_path: Path) -> None:
    project = tmp_path / "project"
    shutil.copytree(bake(), project)
    run("git", "init", "-q", cwd=project)
    commit_all(project, "bake")
    env = {"PRE_COMMIT_HOME": str(tmp_path / "pre-commit-home")}
    run(sys.executable, "-m", "pre_commit", "run", "--all-files", cwd=project, env=env)


@pytest.mark.slow
def test_cruft_update_brings_a_template_change_into_a_baked_project(tmp_path: Path) -> None:
    template = tmp_path / "template"
    tracked = run("git", "ls-files", cwd=TEMPLATE_DIR).splitlines()
    for name in tracked:
        (template / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(TEMPLATE_DIR / name, template / name)
    run("git", "init", "-q", cwd=template)
    commit_all(template, "template")

    cruft = [sys.executable, "-m", "cruft"]
    run(
        *cruft,
        "create",
        "--no-input",
        "--output-dir",
        str(tmp_path / "out"),
        str(template),
        cwd=tmp_path,
    )
    project = tmp_path / "out" / "mnist-lab"
    assert (project / ".cruft.json").is_file()
    run("git", "init", "-q", cwd=project)
    commit_all(project, "bake")

    readme = next(template.glob("*cookiecutter.project_slug*")) / "README.md"
    readme.write_text(readme.read_text() + "\nA line added by a later template release.\n")
    commit_all(template, "template change")
    run(*cruft, "update", "--skip-apply-ask", "--allow-untracked-files", cwd=project)
    assert "A line added by a later template release." in (project / "README.md").read_text()
    run(*cruft, "check", cwd=project)

    # A wing taken later: the answer changes and the wing's files, extra and tests arrive.
    commit_all(project, "template update")
    assert not (project / "src" / "mnist_lab" / "inference" / "serve.py").exists()
    serve_on = ["--variables-to-update", json.dumps({"serve": "yes"})]
    run(*cruft, "update", "--skip-apply-ask", "--allow-untracked-files", *serve_on, cwd=project)
    assert (project / "src" / "mnist_lab" / "inference" / "serve.py").is_file()
    assert (project / "tests" / "test_serve.py").is_file()
    assert "litserve" in (project / "pyproject.toml").read_text()
    answers = json.loads((project / ".cruft.json").read_text())["context"]["cookiecutter"]
    assert answers["serve"] == "yes"


@pytest.mark.slow
@pytest.mark.parametrize("installer", ["pip", "uv"])
def test_pyproject_installs_with_pip_and_uv(bake: Bake, installer: str, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", str(venv), cwd=tmp_path)
    python = str(venv / "bin" / "python")
    # --no-deps: this checks the project's own metadata and build, not the registry's wheels.
    if installer == "pip":
        command = [sys.executable, "-m", "pip", "--python", python, "install"]
    else:
        command = [str(Path(sys.executable).parent / "uv"), "pip", "install", "--python", python]
    project = shutil.copytree(bake(), tmp_path / "project")  # the build writes egg-info there
    run(*command, "--no-deps", "-e", f"{project}[dev]", cwd=tmp_path)
    scripts = {path.name for path in (venv / "bin").iterdir()}
    assert {"mnist-lab-train", "mnist-lab-predict", "mnist-lab-export"} <= scripts


@pytest.mark.slow
def test_the_wheel_carries_the_configs_and_the_page(bake: Bake, tmp_path: Path) -> None:
    """Installed, not edited in place, the package still finds its default config."""
    project = shutil.copytree(bake(**EVERY_OPTION), tmp_path / "project")
    wheel = ["-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path)]
    run(sys.executable, *wheel, str(project), cwd=tmp_path)
    [built] = tmp_path.glob("*.whl")
    names = set(zipfile.ZipFile(built).namelist())
    for name in ("configs/default.yaml", "configs/search.yaml", "inference/page.html"):
        assert f"mnist_lab/{name}" in names, name
