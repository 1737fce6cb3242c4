"""What the outside world can reach through Apache, and what it cannot
(docs/contract/targets.md §7).

The anonymous XMPP session here is a browser's: plain BOSH over HTTP through Apache's
`/http-bind`, as Strophe.js speaks it. test_xmpp.py checks the same refusals on a direct c2s
connection; these check that the path a browser really takes grants nothing more.
"""

from __future__ import annotations

import asyncio
import secrets
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator

import httpx
import pytest

from roadwatch.adapters.xmpp import EventReceiver
from roadwatch.adapters.xmpp.stanza import PubSubItem, event_element, pubsub_items
from roadwatch.domain.events import Event, EventType
from roadwatch.runner.apache import Apache
from roadwatch.runner.process import RunLayout
from roadwatch.runner.prosody import Prosody
from roadwatch.settings import Settings
from tests.integration.db import reset_zones
from tests.integration.test_apache import api_running
from tests.integration.test_xmpp import Collected, Positions, make_event, running
from tests.integration.test_zone_store import square_feature

pytestmark = pytest.mark.integration

WAIT_S = 15.0
BOSH_NS = "http://jabber.org/protocol/httpbind"
CLIENT_NS = "jabber:client"
PUBSUB_NS = "http://jabber.org/protocol/pubsub"
PUBSUB_OWNER_NS = "http://jabber.org/protocol/pubsub#owner"
STANZA_ERROR_NS = "urn:ietf:params:xml:ns:xmpp-stanzas"


@pytest.fixture(scope="module")
def site(test_settings: Settings, apache: Apache) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=f"http://127.0.0.1:{test_settings.http_port}", timeout=WAIT_S
    ) as client:
        yield client


@pytest.fixture(scope="module")
def api(test_settings: Settings, layout: RunLayout, mariadb: object) -> Iterator[None]:
    with api_running(test_settings, layout):
        yield
    reset_zones(test_settings)


# --- Apache ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    ["/", "/history", "/no-such-page", "/vendor/", "/api/health", "/api/no-such-route"],
)
def test_every_answer_carries_the_security_headers_and_no_version(
    site: httpx.Client, api: None, path: str
) -> None:
    response = site.get(path)
    csp = response.headers["content-security-policy"]
    for directive in ("default-src 'self'", "script-src 'self'", "frame-ancestors 'none'"):
        assert directive in csp, (path, csp)
    assert "unsafe-inline" not in csp.split("script-src", 1)[1].split(";", 1)[0]
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["x-frame-options"] == "DENY"
    # One Server header, naming no version and no upstream (uvicorn's is switched off).
    assert response.headers.get_list("server") == ["Apache"]


@pytest.mark.parametrize("path", ["/no-such-page", "/vendor/", "/node_modules/"])
def test_error_pages_have_no_server_signature(site: httpx.Client, path: str) -> None:
    response = site.get(path)
    assert response.status_code in (403, 404)
    assert "Apache/" not in response.text
    assert "Server at" not in response.text


def test_trace_is_refused(site: httpx.Client) -> None:
    # TRACE would echo request headers (cookies, Authorization) back to a script.
    response = site.request("TRACE", "/", headers={"X-Probe": "secret-looking"})
    assert response.status_code == 405
    assert "secret-looking" not in response.text


# --- REST writes through Apache --------------------------------------------------------------


def test_rest_writes_through_apache_need_the_token(
    site: httpx.Client, api: None, test_settings: Settings
) -> None:
    reset_zones(test_settings)
    feature = square_feature("secured", "Secured")
    token = test_settings.api_token.get_secret_value()
    refused = [
        site.post("/api/zones", json=feature),
        site.post("/api/zones", json=feature, headers={"Authorization": "Bearer wrong"}),
        site.put("/api/zones/secured", json=feature, headers={"Authorization": f"Basic {token}"}),
        site.delete("/api/zones/secured"),
    ]
    for response in refused:
        assert response.status_code == 401, response.text
        assert response.json()["error"] == "unauthorized"
        assert response.headers["www-authenticate"].startswith("Bearer")
    assert site.get("/api/zones/secured").status_code == 404
    # The proxy passes the Authorization header on: the right token works through Apache.
    created = site.post("/api/zones", json=feature, headers={"Authorization": f"Bearer {token}"})
    assert created.status_code == 201, created.text
    assert site.get("/api/zones/secured").json()["properties"]["name"] == "Secured"


# --- anonymous browser sessions over BOSH ----------------------------------------------------


class BoshSession:
    """A minimal BOSH client (XEP-0124/0206): one request at a time, stanzas collected."""

    def __init__(self, client: httpx.Client, domain: str) -> None:
        self.client = client
        self.domain = domain
        self.rid = secrets.randbelow(2**40) + 1
        self.sid = ""
        self.received: list[ET.Element] = []

    def post(self, payload: str = "", **attributes: str) -> ET.Element:
        self.rid += 1
        attrs = {"rid": str(self.rid), **({"sid": self.sid} if self.sid else {}), **attributes}
        rendered = " ".join(f"{name}='{value}'" for name, value in attrs.items())
        body = f"<body xmlns='{BOSH_NS}' xmlns:xmpp='urn:xmpp:xbosh' {rendered}>{payload}</body>"
        response = self.client.post(
            "/http-bind",
            content=body.encode(),
            headers={"Content-Type": "text/xml; charset=utf-8"},
        )
        assert response.status_code == 200, response.text
        answer = ET.fromstring(response.content)
        assert answer.get("type") != "terminate", response.text
        self.received.extend(answer)
        return answer

    def wait_for(self, check: Callable[[ET.Element], bool], what: str) -> ET.Element:
        for _ in range(10):
            found = next((element for element in self.received if check(element)), None)
            if found is not None:
                self.received.remove(found)
                return found
            self.post()
        raise AssertionError(f"no {what} over BOSH; received {self.received}")

    def login_anonymously(self) -> str:
        """Open a session on the anonymous host and bind a resource; return the full JID."""
        created = self.post(
            to=self.domain, wait="2", hold="1", ver="1.6", **{"xmpp:version": "1.0"}
        )
        self.sid = created.attrib["sid"]
        self.wait_for(lambda e: e.tag.endswith("}features"), "stream features")
        self.post("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='ANONYMOUS'/>")
        self.wait_for(lambda e: e.tag == "{urn:ietf:params:xml:ns:xmpp-sasl}success", "success")
        self.post(to=self.domain, **{"xmpp:restart": "true"})
        self.wait_for(lambda e: e.tag.endswith("}features"), "features after restart")
        bound = self.iq("set", "", "<bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/>")
        assert bound.get("type") == "result", ET.tostring(bound)
        jid = bound.findtext(".//{urn:ietf:params:xml:ns:xmpp-bind}jid")
        assert jid is not None
        self.post("<presence/>")
        return jid

    def iq(self, kind: str, to: str, payload: str) -> ET.Element:
        ident = secrets.token_hex(6)
        target = f" to='{to}'" if to else ""
        self.post(f"<iq xmlns='{CLIENT_NS}' type='{kind}' id='{ident}'{target}>{payload}</iq>")
        return self.wait_for(stanza_with_id("iq", ident), f"iq {ident}")

    def close(self) -> None:
        self.rid += 1
        body = f"<body xmlns='{BOSH_NS}' rid='{self.rid}' sid='{self.sid}' type='terminate'/>"
        self.client.post("/http-bind", content=body.encode())


def stanza_with_id(kind: str, ident: str) -> Callable[[ET.Element], bool]:
    """Match the stanza of this kind (iq, message) answering the one sent with this id."""
    return lambda element: element.tag == f"{{{CLIENT_NS}}}{kind}" and element.get("id") == ident


def error_condition(stanza: ET.Element) -> str | None:
    error = stanza.find(f"{{{CLIENT_NS}}}error")
    if error is None:
        return None
    return next(
        (
            child.tag.split("}")[1]
            for child in error
            if child.tag.startswith(f"{{{STANZA_ERROR_NS}")
        ),
        None,
    )


def node_items(bosh: BoshSession, service: str, node: str) -> list[PubSubItem]:
    answer = bosh.iq("get", service, f"<pubsub xmlns='{PUBSUB_NS}'><items node='{node}'/></pubsub>")
    assert answer.get("type") == "result", ET.tostring(answer)
    items = answer.find(f".//{{{PUBSUB_NS}}}items")
    assert items is not None
    return [item for item in pubsub_items(items) if isinstance(item, PubSubItem)]


def publish_as_collector(settings: Settings, event: Event) -> None:
    async def scenario() -> None:
        positions = Positions()
        receiver = EventReceiver(settings, Collected().handle, positions.load, positions.save)
        async with running(receiver):
            assert await receiver.publish(event)

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_an_anonymous_bosh_session_through_apache_can_read_but_never_write(
    test_settings: Settings, prosody: Prosody, site: httpx.Client
) -> None:
    event = make_event(EventType.ACCIDENT)
    publish_as_collector(test_settings, event)
    service = test_settings.pubsub_service
    node = event.type.pubsub_node
    forged = event.next_version(details={"forged": True})
    forged_item = ET.tostring(event_element(forged), encoding="unicode")

    bosh = BoshSession(site, test_settings.anonymous_domain)
    jid = bosh.login_anonymously()
    assert jid.split("@")[1].split("/")[0] == test_settings.anonymous_domain
    try:
        # Reading is what the live page does, and it works.
        before = node_items(bosh, service, node)
        assert PubSubItem(node, event.id, event) in before

        attempts = {
            "overwrite an item": f"<pubsub xmlns='{PUBSUB_NS}'><publish node='{node}'>"
            f"<item id='{event.id}'>{forged_item}</item></publish></pubsub>",
            "add an item": f"<pubsub xmlns='{PUBSUB_NS}'><publish node='{node}'>"
            f"<item id='forged-{secrets.token_hex(4)}'>{forged_item}</item></publish></pubsub>",
            "retract an item": f"<pubsub xmlns='{PUBSUB_NS}'><retract node='{node}' notify='1'>"
            f"<item id='{event.id}'/></retract></pubsub>",
            "purge the node": f"<pubsub xmlns='{PUBSUB_OWNER_NS}'><purge node='{node}'/></pubsub>",
            "delete the node": f"<pubsub xmlns='{PUBSUB_OWNER_NS}'><delete node='{node}'/>"
            "</pubsub>",
            "create a node": f"<pubsub xmlns='{PUBSUB_NS}'><create node='browser-node'/></pubsub>",
        }
        for what, payload in attempts.items():
            answer = bosh.iq("set", service, payload)
            assert answer.get("type") == "error", (what, ET.tostring(answer))
            assert error_condition(answer) == "forbidden", (what, ET.tostring(answer))

        # Nor may it talk to the service accounts, which would trust what it says.
        for account in (test_settings.collector_jid, test_settings.gateway_jid):
            ident = secrets.token_hex(6)
            bosh.post(
                f"<message xmlns='{CLIENT_NS}' to='{account}' type='chat' id='{ident}'>"
                f"<body>fake</body>{forged_item}</message>"
            )
            bounced = bosh.wait_for(stanza_with_id("message", ident), f"bounce from {account}")
            assert bounced.get("type") == "error"
            assert error_condition(bounced) == "not-allowed"

        assert node_items(bosh, service, node) == before
    finally:
        bosh.close()
