"""Put the test database's tables back to a known state between integration tests."""

from __future__ import annotations

from roadwatch.adapters.mysql.connection import connect
from roadwatch.settings import Settings


def _run(settings: Settings, *statements: str) -> None:
    conn = connect(settings, autocommit=True)
    try:
        with conn.cursor() as cur:
            for statement in statements:
                cur.execute(statement)
    finally:
        conn.close()


def clear_events(settings: Settings) -> None:
    """Delete every stored event and its station rows."""
    _run(settings, "DELETE FROM event_stations", "DELETE FROM events")


def reset_zones(settings: Settings) -> None:
    """Empty the zones and put the counter back to "never seeded nor edited"."""
    _run(settings, "DELETE FROM zones", "UPDATE zone_revision SET revision = 0 WHERE id = 1")
