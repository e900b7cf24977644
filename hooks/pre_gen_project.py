"""Refuse invalid answers with one line before cookiecutter writes any project file."""

import keyword
import re
import sys

PROJECT_SLUG = {{cookiecutter.project_slug | quoted}}
PACKAGE_NAME = {{cookiecutter.package_name | quoted}}
AUTHOR_EMAIL = {{cookiecutter.author_email | quoted}}

# The generated project's dependencies, every extra and the build backend included, with the
# top-level modules each installs (and those of the packages they pull in that a project
# imports directly). A package named like one of them would shadow it. The template's tests
# check that every dependency a bake declares is listed here.
DEPENDENCY_MODULES = {
    "torch": ("torch", "torchgen", "functorch"),
    "torchvision": ("torchvision", "PIL", "numpy"),
    "pytorch-lightning": ("pytorch_lightning", "lightning_fabric", "lightning_utilities"),
    "lightning": ("lightning",),
    "torchmetrics": ("torchmetrics",),
    "jsonargparse": ("jsonargparse", "yaml", "docstring_parser", "typeshed_client"),
    "matplotlib": ("matplotlib", "mpl_toolkits", "pylab", "contourpy", "cycler", "kiwisolver"),
    "tensorboard": ("tensorboard", "tensorboard_data_server", "google", "grpc"),
    "wandb": ("wandb",),
    "mlflow-skinny": ("mlflow",),
    "timm": ("timm", "safetensors", "huggingface_hub"),
    "onnx": ("onnx",),
    "onnxscript": ("onnxscript", "onnx_ir"),
    "onnxruntime": ("onnxruntime",),
    "litserve": (
        "litserve", "fastapi", "starlette", "uvicorn", "pydantic", "pydantic_core", "zmq",
        "anyio", "h11", "httptools", "uvloop", "websockets", "watchfiles", "dotenv", "click",
    ),
    "python-multipart": ("multipart", "python_multipart"),
    "optuna": ("optuna", "sqlalchemy", "alembic", "mako", "colorlog", "tqdm"),
    "optuna-dashboard": ("optuna_dashboard",),
    "psycopg": ("psycopg", "psycopg_binary"),
    "pytest": ("pytest", "_pytest", "pluggy", "iniconfig"),
    "ruff": ("ruff",),
    "pre-commit": ("pre_commit",),
    "setuptools": ("setuptools", "pkg_resources", "_distutils_hack"),
    "packaging": ("packaging",),
    "typing-extensions": ("typing_extensions",),
}
# Besides the standard library (sys.stdlib_module_names), CPython's own test package.
TAKEN_NAMES = {"test", "tests"} | {
    module.lower() for modules in DEPENDENCY_MODULES.values() for module in modules
}
# Longer names make file names and import lines too long to read (and to lint clean).
MAX_PACKAGE_LENGTH = 40
# Set where the template turns unsafe slugs into a throw-away folder (local_extensions.py).
MAX_SLUG_LENGTH = {{ max_slug_length }}

# The distribution-name rule of the Python packaging specifications.
SLUG_PATTERN = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?")


def problem_with_slug(slug: str) -> str | None:
    if len(slug) > MAX_SLUG_LENGTH:
        return (
            f"project_slug {slug[:20]!r}... has {len(slug)} characters, more than "
            f"{MAX_SLUG_LENGTH}: choose a shorter project_slug (or project_name)"
        )
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
    if len(name) > MAX_PACKAGE_LENGTH:
        return (
            f"package_name {name[:20]!r}... has {len(name)} characters, more than "
            f"{MAX_PACKAGE_LENGTH}: choose a shorter package_name"
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
