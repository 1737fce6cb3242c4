"""Locate the shared deploy/ files and render the ones that take `${NAME}` placeholders."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

from roadwatch.runner.process import RunnerError

_PLACEHOLDER = re.compile(r"\$\{([A-Z][A-Z0-9_]*)\}")


def repo_dir() -> Path:
    """Return the repository root (ROADWATCH_REPO_DIR, else the folder holding deploy/)."""
    configured = os.environ.get("ROADWATCH_REPO_DIR")
    if configured:
        return Path(configured).resolve()
    for parent in Path(__file__).resolve().parents:
        if (parent / "deploy").is_dir() and (parent / "pyproject.toml").is_file():
            return parent
    raise RunnerError("cannot find the repository's deploy/ folder; set ROADWATCH_REPO_DIR")


def deploy_dir() -> Path:
    """Return the deploy/ folder shared by the native runner and the containers.

    ROADWATCH_DEPLOY_DIR points elsewhere, for an installed package without the repository.
    """
    configured = os.environ.get("ROADWATCH_DEPLOY_DIR")
    return Path(configured).resolve() if configured else repo_dir() / "deploy"


def render(text: str, variables: Mapping[str, str]) -> str:
    """Replace every `${NAME}`; a missing name is an error, never an empty string."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in variables:
            raise RunnerError(f"no value for ${{{name}}}")
        return variables[name]

    return _PLACEHOLDER.sub(value, text)


def render_file(
    source: Path, target: Path, variables: Mapping[str, str], mode: int = 0o644
) -> Path:
    """Render `source` into `target` (written only when it changes)."""
    text = render(source.read_text(), variables)
    if not target.exists() or target.read_text() != text:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    target.chmod(mode)
    return target
