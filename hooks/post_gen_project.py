"""Remove the files of options that were not chosen, then print the next steps."""

import shutil
from pathlib import Path

LICENSE = {{cookiecutter.license | quoted}}
CI = {{cookiecutter.ci | quoted}}
DOCKER = {{cookiecutter.docker | quoted}}
DATASET = {{cookiecutter.dataset | quoted}}
SERVE = {{cookiecutter.serve | quoted}}
TUNE = {{cookiecutter.tune | quoted}}
MODEL = {{cookiecutter.model | quoted}}
PROJECT_SLUG = {{cookiecutter.project_slug | quoted}}
PACKAGE_NAME = {{cookiecutter.package_name | quoted}}
PACKAGE = Path("src", PACKAGE_NAME)

# Every file of an option, removed when it is not chosen.
SERVE_FILES = [
    PACKAGE / "inference" / "serve.py",
    PACKAGE / "inference" / "server.py",
    PACKAGE / "inference" / "api.py",
    PACKAGE / "inference" / "processes.py",
    PACKAGE / "inference" / "page.html",
    Path("tests", "test_serve.py"),
    Path("tests", "test_page.py"),
    Path("tests", "serving.py"),
    Path("docs"),
]
TUNE_FILES = [
    PACKAGE / "tune",
    PACKAGE / "configs" / "search.yaml",
    Path("tests", "test_tune.py"),
    Path("scripts", "tune.sbatch"),
]
BACKBONE_FILES = [
    PACKAGE / "training" / "finetuning.py",
    Path("tests", "test_backbone.py"),
]

# The image-folder project has no data of its own: training needs the user's folder.
DATA_FLAG = " --data.data_dir <folder holding train/<class>/>" if DATASET == "image_folder" else ""
NEXT_STEPS = f"""
Created {PROJECT_SLUG}. Next steps:

  cd {PROJECT_SLUG}
  python -m venv .venv && . .venv/bin/activate
  pip install -e ".[dev]"
  python -m {PACKAGE_NAME}.train{DATA_FLAG}
  pytest
"""


def remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink()


def choose_data_module() -> None:
    """Keep one data module as data.py, with the tests of its file format, and drop the other."""
    folder_files = {
        PACKAGE / "_image_folder.py": PACKAGE / "data.py",
        PACKAGE / "_image_cache.py": PACKAGE / "image_cache.py",
        PACKAGE / "_image_files.py": PACKAGE / "image_files.py",
        PACKAGE / "_augment.py": PACKAGE / "augment.py",
        Path("tests", "_test_image_folder.py"): Path("tests", "test_image_folder.py"),
    }
    for template, final in folder_files.items():
        if DATASET == "image_folder":
            template.replace(final)
        else:
            template.unlink()
    if DATASET == "image_folder":
        Path("tests", "test_idx_files.py").unlink()


def main() -> None:
    choose_data_module()
    unchosen = {
        "LICENSE": [Path("LICENSE")] if LICENSE == "none" else [],
        "ci": [Path(".github")] if CI == "none" else [],
        "docker": [Path("Dockerfile"), Path(".dockerignore")] if DOCKER == "no" else [],
        "serve": SERVE_FILES if SERVE == "no" else [],
        "tune": TUNE_FILES if TUNE == "no" else [],
        "model": BACKBONE_FILES if MODEL != "backbone" else [],
    }
    for paths in unchosen.values():
        for path in paths:
            remove(path)
    print(NEXT_STEPS)


if __name__ == "__main__":
    main()
