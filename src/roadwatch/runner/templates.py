"""Locate the shared deploy/ files and render the ones that take `${NAME}` placeholders."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from roadwatch import paths
from roadwatch.runner.process import RunnerError

_PLACEHOLDER = re.compile(r"\$\{([A-Z][A-Z0-9_]*)\}")


def repo_dir() -> Path:
    """Return the repository root (ROADWATCH_REPO_DIR, else the folder holding deploy/)."""
    try:
        return paths.repo_dir()
    except paths.RepositoryNotFound as exc:
        raise RunnerError(str(exc)) from exc


def deploy_dir() -> Path:
    """Return the deploy/ folder shared by the native runner and the containers."""
    try:
        return paths.deploy_dir()
    except paths.RepositoryNotFound as exc:
        raise RunnerError(str(exc)) from exc


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
