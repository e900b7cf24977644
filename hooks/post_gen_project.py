"""Remove the files of options that were not chosen, then print the next steps."""

import shutil
from pathlib import Path

LICENSE = {{ cookiecutter.license | quoted }}
CI = {{ cookiecutter.ci | quoted }}
DOCKER = {{ cookiecutter.docker | quoted }}
PROJECT_SLUG = {{ cookiecutter.project_slug | quoted }}
PACKAGE_NAME = {{ cookiecutter.package_name | quoted }}

NEXT_STEPS = f"""
Created {PROJECT_SLUG}. Next steps:

  cd {PROJECT_SLUG}
  python -m venv .venv && . .venv/bin/activate
  pip install -e ".[dev]"
  python -m {PACKAGE_NAME}.train --config configs/default.yaml
  pytest
"""


def main() -> None:
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
