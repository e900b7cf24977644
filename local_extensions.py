"""Jinja filters used by the template (loaded through ``_extensions`` in cookiecutter.json)."""

import json

from jinja2.ext import Extension

# Cookiecutter creates the project folder before the pre-gen hook runs, so a slug such
# as "../x" or "a/b" would already have written outside the output folder by the time
# the hook refuses it. Such a slug becomes this throwaway folder instead: the hook
# refuses the slug and cookiecutter removes the folder.
REFUSED_SLUG_FOLDER = ".refused-project-slug"


# A slug this long is refused by the hook (which reads it from here, as `max_slug_length`); as
# a folder name it could exceed the file system's limit before the hook runs.
MAX_SLUG_LENGTH = 64


def project_folder(slug: str) -> str:
    """Return the slug if it is one plain path component, else the throwaway folder."""
    unsafe = not slug or slug.startswith(".") or "/" in slug or "\\" in slug
    return REFUSED_SLUG_FOLDER if unsafe or len(slug) > MAX_SLUG_LENGTH else slug


def quoted(value: str) -> str:
    """Quote a string so it is a valid literal in TOML, YAML and Python alike."""
    return json.dumps(value, ensure_ascii=False)


class TemplateFilters(Extension):
    def __init__(self, environment):
        super().__init__(environment)
        environment.filters["project_folder"] = project_folder
        environment.filters["quoted"] = quoted
        environment.globals["max_slug_length"] = MAX_SLUG_LENGTH
