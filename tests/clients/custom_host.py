"""Run a slixmpp script unchanged, connecting to HOST PORT instead of looking up its domain.

Usage: python custom_host.py HOST PORT SCRIPT [ARGUMENTS...]

The XMPP domain of a RoadWatch server resolves nowhere (docs/contract/xmpp.md §1,
docs/accounts-and-tls.md), so a client must be given the host, as in Gajim's or Conversations'
"custom host" field. A slixmpp script calls `connect()` without an address; here that call gets one.
Nothing else of the script or of slixmpp's defaults changes (STARTTLS, certificate checks,
mechanisms).
"""

from __future__ import annotations

import runpy
import sys
from typing import Any

import slixmpp


def main() -> None:
    host, port, script, *arguments = sys.argv[1:]
    connect = slixmpp.ClientXMPP.connect

    def connect_to_host(
        self: Any, given_host: str | None = None, given_port: int | None = None
    ) -> Any:
        return connect(self, given_host or host, given_port or int(port))

    slixmpp.ClientXMPP.connect = connect_to_host  # type: ignore[method-assign,assignment]
    sys.argv = [script, *arguments]
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
