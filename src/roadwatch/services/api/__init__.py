"""The REST API service (SPEC §7)."""

from roadwatch.services.api.app import create_app, main

__all__ = ["create_app", "main"]
