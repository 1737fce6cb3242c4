"""The REST API under test: the real uvicorn server of `roadwatch api`, in a thread."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import httpx
import uvicorn

from roadwatch.runner.process import free_port, wait_until
from roadwatch.services.api.app import server_config
from roadwatch.settings import Settings


@contextlib.contextmanager
def serve(settings: Settings) -> Iterator[httpx.Client]:
    """Run the API as `roadwatch api` would, in a thread, on a free port."""
    settings = settings.model_copy(update={"api_port": free_port()})
    server = uvicorn.Server(server_config(settings))
    thread = threading.Thread(target=server.run, name="api-under-test", daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started, "api under test", timeout_s=20)
        base_url = f"http://{settings.api_host}:{settings.api_port}"
        with httpx.Client(base_url=base_url, timeout=15) as client:
            yield client
    finally:
        server.should_exit = True
        thread.join(timeout=15)
