"""Where the repository's own files are: its root and the deploy/ folder every runner shares."""

from __future__ import annotations

import os
from pathlib import Path


class RepositoryNotFound(LookupError):
    """Neither ROADWATCH_REPO_DIR nor a parent folder holds the repository."""


def repo_dir() -> Path:
    """Return the repository root (ROADWATCH_REPO_DIR, else the folder holding deploy/)."""
    configured = os.environ.get("ROADWATCH_REPO_DIR")
    if configured:
        return Path(configured).resolve()
    for parent in Path(__file__).resolve().parents:
        if (parent / "deploy").is_dir() and (parent / "pyproject.toml").is_file():
            return parent
    raise RepositoryNotFound("cannot find the repository's deploy/ folder; set ROADWATCH_REPO_DIR")


def deploy_dir() -> Path:
    """Return the deploy/ folder shared by the native runner and the containers.

    ROADWATCH_DEPLOY_DIR points elsewhere, for an installed package without the repository.
    """
    configured = os.environ.get("ROADWATCH_DEPLOY_DIR")
    return Path(configured).resolve() if configured else repo_dir() / "deploy"
