"""The session's bakes, shared by every test (see bakes.py for the helpers)."""

import pytest
from bakes import TEMPLATE_DIR, Bake

# The throw-away Slurm cluster, a fixture of its own module, for the tests that ask for it.
pytest_plugins = ["slurm_cluster"]


@pytest.fixture(scope="session")
def bake(cookies_session) -> Bake:
    """Bake with the given answers (the rest default) and return the project folder.

    Bakes are cached per set of answers, so tests that share one only pay for it once.
    """
    baked: dict[tuple, object] = {}

    def bake_with(**answers: str):
        key = tuple(sorted(answers.items()))
        if key not in baked:
            result = cookies_session.bake(extra_context=answers, template=str(TEMPLATE_DIR))
            assert result.exit_code == 0, f"bake with {answers} failed: {result.exception!r}"
            baked[key] = result.project_path
        return baked[key]

    return bake_with
