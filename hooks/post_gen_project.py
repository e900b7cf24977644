"""Remove the files of options that were not chosen, then print the next steps."""

import shutil
from pathlib import Path

LICENSE = {{cookiecutter.license | quoted}}
CI = {{cookiecutter.ci | quoted}}
DOCKER = {{cookiecutter.docker | quoted}}
DATASET = {{cookiecutter.dataset | quoted}}
PROJECT_SLUG = {{cookiecutter.project_slug | quoted}}
PACKAGE_NAME = {{cookiecutter.package_name | quoted}}

# The image-folder project has no data of its own: training needs the user's folder.
DATA_FLAG = " --data.data_dir <folder holding train/<class>/>" if DATASET == "image_folder" else ""
NEXT_STEPS = f"""
Created {PROJECT_SLUG}. Next steps:

  cd {PROJECT_SLUG}
  python -m venv .venv && . .venv/bin/activate
  pip install -e ".[dev]"
  python -m {PACKAGE_NAME}.train --config configs/default.yaml{DATA_FLAG}
  pytest
"""


def choose_data_module() -> None:
    """Keep one data module as data.py, with the tests of its file format, and drop the other."""
    package = Path("src", PACKAGE_NAME)
    folder_module, folder_tests = package / "_image_folder.py", Path("tests/_test_image_folder.py")
    if DATASET == "image_folder":
        folder_module.replace(package / "data.py")
        folder_tests.replace("tests/test_image_folder.py")
        Path("tests/test_idx_files.py").unlink()
    else:
        folder_module.unlink()
        folder_tests.unlink()


def main() -> None:
    choose_data_module()
    if LICENSE == "none":
        Path("LICENSE").unlink()
    if CI == "none":
        shutil.rmtree(".github")
    if DOCKER == "no":
        Path("Dockerfile").unlink()
        Path(".dockerignore").unlink()
    print(NEXT_STEPS)


if __name__ == "__main__":
    main()
