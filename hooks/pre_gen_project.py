"""Refuse invalid answers with one line before cookiecutter writes any project file."""

import keyword
import re
import sys

PROJECT_SLUG = {{ cookiecutter.project_slug | quoted }}
PACKAGE_NAME = {{ cookiecutter.package_name | quoted }}
AUTHOR_EMAIL = {{ cookiecutter.author_email | quoted }}

# Import names the generated project or its dependencies already use, and CPython's own
# test package, which sys.stdlib_module_names leaves out.
TAKEN_NAMES = {
    "jsonargparse",
    "lightning",
    "lightning_fabric",
    "lightning_utilities",
    "numpy",
    "pytorch_lightning",
    "tensorboard",
    "test",
    "tests",
    "torch",
    "torchmetrics",
    "torchvision",
    "yaml",
}

# The distribution-name rule of the Python packaging specifications.
SLUG_PATTERN = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?")


def problem_with_slug(slug: str) -> str | None:
    if SLUG_PATTERN.fullmatch(slug):
        return None
    return (
        f"project_slug {slug!r} is not a valid folder and distribution name: use letters, "
        "digits, '-', '_' and '.', starting and ending with a letter or digit (e.g. 'mnist-lab')"
    )


def problem_with_package(name: str) -> str | None:
    if not re.fullmatch(r"[a-z_][a-z0-9_]*", name):
        return (
            f"package_name {name!r} is not a lowercase Python identifier: use lowercase "
            "letters, digits and '_', not starting with a digit (e.g. 'mnist_lab')"
        )
    if keyword.iskeyword(name):
        return f"package_name {name!r} is a Python keyword: choose another name"
    if name in sys.stdlib_module_names or name in TAKEN_NAMES:
        return (
            f"package_name {name!r} would shadow the module {name!r} of the standard "
            "library or a dependency: choose another name"
        )
    return None


def problem_with_email(email: str) -> str | None:
    if re.fullmatch(r"[^@\s]+@[^@\s]+", email):
        return None
    return f"author_email {email!r} is not an e-mail address (expected name@domain)"


def main() -> int:
    for problem in (
        problem_with_slug(PROJECT_SLUG),
        problem_with_package(PACKAGE_NAME),
        problem_with_email(AUTHOR_EMAIL),
    ):
        if problem:
            print(f"error: {problem}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
