"""One long-lived XMPP session kept up by an explicit reconnect loop, for sender and receiver."""

# The slixmpp client is created inside the running loop (slixmpp hangs otherwise,
# docs/STACK-NOTES.md §5), and only when `run()` starts.

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import random
import socket
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slixmpp import JID, ClientXMPP
from slixmpp.exceptions import IqError, IqTimeout

from roadwatch.adapters.xmpp.errors import XmppAuthError, XmppUnavailable

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential back-off between reconnect attempts, with jitter so clients do not align."""

    initial_s: float
    factor: float
    maximum_s: float
    jitter: float = 0.2

    def delays(self) -> Iterable[float]:
        """Yield successive delays: initial, then growing by `factor` up to `maximum_s`."""
        delay = self.initial_s
        while True:
            yield delay * (1 + random.uniform(-self.jitter, self.jitter))
            delay = min(self.maximum_s, delay * self.factor)


# Short first: a Prosody restart takes under a second (docs/STACK-NOTES.md §1), and XEP-0198
# resumption only works within the server's smacks_hibernation_time (10 s in deploy/prosody).
RECONNECT_BACKOFF = Backoff(initial_s=0.25, factor=2.0, maximum_s=15.0)
# A session that lasted this long was healthy: the next failure starts the back-off again.
STABLE_SESSION_S = 30.0
CONNECT_TIMEOUT_S = 10.0
# Consecutive refusals of our credentials before giving up (the runner may still be creating
# the accounts when a service starts; after that, retrying cannot help).
AUTH_ATTEMPTS = 3
# XEP-0199 pings find a dead TCP connection that no error reported (a silent network drop).
PING_INTERVAL_S = 20.0
PING_TIMEOUT_S = 10.0
# A resumed session is pinged at once: after the server was frozen (SIGSTOP) it may take the
# resumption and then serve nothing on that stream, and waiting for the first regular ping left
# the service stalled for 30 s. A fresh session (no resumption) follows a failed check.
RESUMED_CHECK_TIMEOUT_S = 5.0
DISCONNECT_WAIT_S = 2.0

OnOnline = Callable[[ClientXMPP, bool], Awaitable[None]]


def is_loopback(host: str) -> bool:
    """Tell whether `host` names this machine's loopback interface."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def make_client(
    jid: str,
    password: str,
    plugins: Iterable[str],
    sm_window: int,
    allow_resume: bool,
    *,
    starttls: bool = False,
    ca_file: Path | None = None,
) -> ClientXMPP:
    """Create a slixmpp client for c2s (call inside the loop).

    With `starttls`, the stream must be encrypted before the password is used, and the server
    must present a certificate for the XMPP domain from `ca_file` (None: the system's store).
    Without it, the client stays in plain text: only for a loopback server, which lets loopback
    clients authenticate without TLS (deploy/prosody/modules/mod_c2s_loopback.lua).
    """
    client = ClientXMPP(
        jid,
        password,
        plugin_config={
            # SCRAM keeps the password secret on plain loopback; elsewhere TLS comes first and
            # a server offering no STARTTLS gets no password.
            "feature_mechanisms": {"unencrypted_scram": not starttls},
            # XEP-0198: ask for an ack every `window` stanzas; more often costs throughput.
            "xep_0198": {"window": sm_window, "allow_resume": allow_resume},
        },
    )
    # No direct TLS on the c2s port: trying it first would fail every attempt once. slixmpp
    # connects for STARTTLS, or in plain text, as told; the STARTTLS feature follows the first.
    client.enable_direct_tls = False
    client.enable_starttls = starttls
    client.enable_plaintext = not starttls
    if starttls and ca_file is not None:
        client.ca_certs = ca_file
    for plugin in ("xep_0198", "xep_0199", *plugins):
        client.register_plugin(plugin)
    return client


def is_encrypted(client: ClientXMPP) -> bool:
    """Tell whether the client's stream runs over TLS."""
    transport = client.transport
    return transport is not None and transport.get_extra_info("ssl_object") is not None


def set_tcp_nodelay(client: ClientXMPP) -> None:
    """Turn Nagle's algorithm off on the client's socket (docs/STACK-NOTES.md §3: it adds
    milliseconds)."""
    transport = client.transport
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None:
        return
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def tcp_nodelay_enabled(client: ClientXMPP) -> bool:
    """Tell whether the client's socket has TCP_NODELAY set."""
    transport = client.transport
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None:
        return False
    return bool(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))


class _AttemptFailed(Exception):
    """One connection attempt did not give a session."""


class Connection:
    """Keep one authenticated session as `jid` up until `close()`, reconnecting with back-off."""

    def __init__(
        self,
        *,
        jid: str,
        password: str,
        host: str,
        port: int,
        plugins: Iterable[str] = (),
        sm_window: int = 5,
        allow_resume: bool = True,
        presence: bool = False,
        backoff: Backoff = RECONNECT_BACKOFF,
        connect_timeout_s: float = CONNECT_TIMEOUT_S,
        ping_interval_s: float = PING_INTERVAL_S,
        setup: Callable[[ClientXMPP], None] | None = None,
        ca_file: Path | None = None,
        starttls: bool | None = None,
    ) -> None:
        self.jid = jid
        self._password = password
        self.host = host
        self.port = port
        # STARTTLS everywhere but on loopback (in containers the server is across a network);
        # the server must then prove it is the XMPP domain with a certificate from `ca_file`.
        self.starttls = not is_loopback(host) if starttls is None else starttls
        self._ca_file = ca_file
        self._plugins = tuple(plugins)
        self._sm_window = sm_window
        self._allow_resume = allow_resume
        self._presence = presence
        self._backoff = backoff
        self._connect_timeout_s = connect_timeout_s
        self._ping_interval_s = ping_interval_s
        self._setup = setup
        self.client: ClientXMPP | None = None
        self.sessions = 0
        self.reconnects = 0
        self._online = asyncio.Event()
        self._closing = asyncio.Event()

    @property
    def online(self) -> bool:
        return self._online.is_set()

    @property
    def closing(self) -> bool:
        return self._closing.is_set()

    async def wait_online(self, timeout_s: float | None = None) -> ClientXMPP:
        """Return the client once a session is up; raise XmppUnavailable after `timeout_s`."""
        try:
            await asyncio.wait_for(self._online.wait(), timeout_s)
        except TimeoutError as exc:
            raise XmppUnavailable(
                f"no XMPP session with {self.host}:{self.port} within {timeout_s:.0f} s"
            ) from exc
        assert self.client is not None
        return self.client

    def close(self) -> None:
        """Ask `run()` to end its session and return."""
        self._closing.set()

    async def run(self, on_online: OnOnline) -> None:
        """Keep a session up; run `on_online(client, resumed)` for each session until it ends."""
        client = make_client(
            self.jid,
            self._password,
            self._plugins,
            self._sm_window,
            self._allow_resume,
            starttls=self.starttls,
            ca_file=self._ca_file,
        )
        if self._setup is not None:
            self._setup(client)
        self.client = client
        delays = iter(self._backoff.delays())
        auth_refusals = 0
        try:
            while not self._closing.is_set():
                try:
                    resumed = await self._connect(client)
                except XmppAuthError:
                    auth_refusals += 1
                    if auth_refusals >= AUTH_ATTEMPTS:
                        raise
                    log.warning("%s: credentials refused, retrying", self.jid)
                except _AttemptFailed as exc:
                    log.warning(
                        "%s: cannot connect to %s:%d: %s", self.jid, self.host, self.port, exc
                    )
                else:
                    auth_refusals = 0
                    started = time.monotonic()
                    await self._serve(client, resumed, on_online)
                    if time.monotonic() - started >= STABLE_SESSION_S:
                        delays = iter(self._backoff.delays())
                if self._closing.is_set():
                    break
                self.reconnects += 1
                delay = next(delays)
                log.info("%s: reconnecting in %.2f s", self.jid, delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._closing.wait(), delay)
        finally:
            self._online.clear()
            await self._shut(client)

    async def _connect(self, client: ClientXMPP) -> bool:
        """Open a session; return True when XEP-0198 resumed the previous one."""
        loop = asyncio.get_running_loop()
        outcome: asyncio.Future[tuple[str, Any]] = loop.create_future()

        def settle(kind: str) -> Callable[[Any], None]:
            def handler(data: Any) -> None:
                if not outcome.done():
                    outcome.set_result((kind, data))

            return handler

        handlers = {
            name: settle(name)
            for name in (
                "session_start",
                "session_resumed",
                "failed_all_auth",
                "connection_failed",
                "disconnected",
                # Handled here, slixmpp leaves the connection to us instead of dropping it.
                "ssl_invalid_chain",
            )
        }
        for name, handler in handlers.items():
            client.add_event_handler(name, handler)
        try:
            client.connect(self.host, self.port)
            kind, data = await asyncio.wait_for(outcome, self._connect_timeout_s)
        except TimeoutError:
            kind, data = "timeout", f"no session after {self._connect_timeout_s:.0f} s"
        finally:
            for name, handler in handlers.items():
                client.del_event_handler(name, handler)
        if kind in ("session_start", "session_resumed"):
            self.sessions += 1
            set_tcp_nodelay(client)
            log.info(
                "%s: session %s with %s:%d%s",
                self.jid,
                "resumed" if kind == "session_resumed" else "started",
                self.host,
                self.port,
                " over TLS" if is_encrypted(client) else "",
            )
            return kind == "session_resumed"
        secured = "starttls" in client.features
        # Stop slixmpp's own retry schedule: this loop decides when to try again.
        client.cancel_connection_attempt()
        await self._drop(client)
        if kind == "ssl_invalid_chain":
            raise _AttemptFailed(f"the server's certificate is not trusted: {data}")
        if kind == "failed_all_auth" and self.starttls and not secured:
            # Not the credentials: no STARTTLS was offered, so the password was never sent.
            raise _AttemptFailed("the server offered no STARTTLS")
        if kind == "failed_all_auth":
            raise XmppAuthError(f"{self.jid}: the server refused the credentials")
        raise _AttemptFailed(f"{kind}: {data}")

    async def _serve(self, client: ClientXMPP, resumed: bool, on_online: OnOnline) -> None:
        """Run one session until it drops or `close()`; `on_online` runs alongside."""
        gone = client.disconnected
        if self._presence:
            # Available presence makes the server route messages for our bare JID to us.
            client.send_presence()
        self._online.set()
        closing = asyncio.ensure_future(self._closing.wait())
        worker = asyncio.ensure_future(on_online(client, resumed))
        pinger = asyncio.ensure_future(self._keepalive(client, check_at_once=resumed))
        try:
            waiting: set[asyncio.Future[Any]] = {gone, closing, worker, pinger}
            while True:
                done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                if worker in done:
                    waiting.discard(worker)
                    error = worker.exception()
                    if error is not None:
                        log.error("%s: session work failed: %r", self.jid, error, exc_info=error)
                        break
                    continue  # the work is done; stay online until the session ends
                break
        finally:
            self._online.clear()
            for task in (closing, worker, pinger):
                task.cancel()
            await asyncio.gather(closing, worker, pinger, return_exceptions=True)
            if not gone.done():
                await self._drop(client)

    async def _keepalive(self, client: ClientXMPP, check_at_once: bool) -> None:
        """Return when a XEP-0199 ping to our server goes unanswered."""
        server = JID(client.boundjid.host)
        if check_at_once and not await self._answers_ping(client, server, RESUMED_CHECK_TIMEOUT_S):
            # The next attempt starts a fresh session: resuming this one again could only
            # land on the same unresponsive session. What it held unacknowledged is sent again
            # by the sender (a fresh session) or caught up from the archive (the receiver).
            stream_management: Any = client.plugin["xep_0198"]
            stream_management.session_end(None)
            log.warning("%s: the resumed session does not answer; starting a fresh one", self.jid)
            return
        while True:
            await asyncio.sleep(self._ping_interval_s)
            if not await self._answers_ping(client, server, PING_TIMEOUT_S):
                log.warning("%s: server stopped answering pings; reconnecting", self.jid)
                return

    @staticmethod
    async def _answers_ping(client: ClientXMPP, server: JID, timeout_s: float) -> bool:
        try:
            await client.plugin["xep_0199"].send_ping(server, timeout=timeout_s)
        except IqTimeout:
            return False
        except IqError:
            pass  # an answer, even an error, proves the link is alive
        return True

    async def _drop(self, client: ClientXMPP) -> None:
        """Close the TCP connection now, keeping the XEP-0198 state for a resumption."""
        if client.transport is None:
            return
        gone = client.disconnected
        client.abort()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(gone), DISCONNECT_WAIT_S)

    async def _shut(self, client: ClientXMPP) -> None:
        """End the stream politely (the server then drops our session at once)."""
        client.cancel_connection_attempt()
        if client.transport is not None:
            gone = client.disconnected
            client.disconnect(wait=DISCONNECT_WAIT_S)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(gone), DISCONNECT_WAIT_S * 2)
        # slixmpp leaves its send-queue task waiting forever once the client is done with.
        sender = getattr(client, "_run_out_filters", None)
        if isinstance(sender, asyncio.Future) and not sender.done():
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender
