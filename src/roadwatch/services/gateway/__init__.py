"""The gateway: MQTT in, validation and detection, events out over XMPP.

Its stages, one module each, in the order a message meets them:

    intake        two MQTT sessions (bulk CAMs, reliable DENMs) and the DENM canary
    detection     validation into typed messages, the detection core, rejection counts
    journal       every accepted input written before its events leave; snapshots
    outbox        events kept in order until the XMPP server acknowledges them
    sender        the outbox to collector@ over one XEP-0198 session
    partitioning  which instance owns a message or an event, when several share the load
    metrics       Prometheus figures, stage latencies and health
    pipeline      the stages chained: `Gateway.handle`
    service       the process: adapters wired, start, orderly stop

Concurrency: one thread, one asyncio event loop. The MQTT client decodes each received chunk
and calls `Gateway.handle` for every message in it, on the loop; detection takes microseconds
per message, so nothing is gained by a second thread (the GIL would serialise it anyway) and a
single thread needs no lock between detection, the journal, the outbox and the snapshots: a
snapshot taken at a point of the loop is consistent by construction. Only two things leave the
loop: the periodic snapshot, written by a child process forked at such a point (journal.py:
it holds a frozen copy of the state, so the loop is held for the fork only), and database
reads of the zone sync (a worker thread). Back-pressure is the loop's too: when the outbox is
full the intake stops reading its sockets, so the broker queues instead of memory growing.

The acknowledgement chain end to end, and why nothing is lost, is docs/ACKNOWLEDGEMENTS.md.
"""

from roadwatch.services.gateway.pipeline import Gateway
from roadwatch.services.gateway.service import GatewayService, main, run

__all__ = ["Gateway", "GatewayService", "main", "run"]
