"""The REST API service (docs/contract/rest-api.md §1)."""

from roadwatch.services.api.app import create_app, main

__all__ = ["create_app", "main"]
