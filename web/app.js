// RoadWatch live view: anonymous XMPP over BOSH (same origin, /http-bind), the current items of
// each PubSub node on load, then live notifications. Event text only ever goes through
// textContent, so nothing a vehicle or zone name holds can run as markup.
"use strict";

(function () {
  const NS_PUBSUB = "http://jabber.org/protocol/pubsub";
  const NS_PUBSUB_EVENT = "http://jabber.org/protocol/pubsub#event";
  const NS_JSON = "urn:xmpp:json:0";
  const DEFAULTS = {
    bosh_path: "/http-bind",
    xmpp_domain: "roadwatch.local",
    anonymous_domain: "anon.roadwatch.local",
    pubsub_service: "pubsub.roadwatch.local",
    pubsub_nodes: ["accident", "traffic_jam", "zone", "hazard"],
  };
  const RECONNECT_MIN_MS = 1000;
  const RECONNECT_MAX_MS = 30000;
  const MAX_ROWS = 500;

  const events = new Map(); // id -> latest event object
  let config = DEFAULTS;
  let connection = null;
  let reconnectDelay = RECONNECT_MIN_MS;
  let reconnectTimer = null;

  const el = (id) => document.getElementById(id);

  function setConnectionState(state, text) {
    const node = el("connection");
    node.dataset.state = state;
    node.textContent = text;
  }

  async function loadConfig() {
    try {
      const response = await fetch("/api/client-config", { headers: { Accept: "application/json" } });
      if (response.ok) config = Object.assign({}, DEFAULTS, await response.json());
    } catch (err) {
      console.warn("client config unavailable, using defaults", err);
    }
  }

  function eventFromItem(item) {
    const json = item.getElementsByTagNameNS(NS_JSON, "json")[0];
    if (!json) return null;
    try {
      const event = JSON.parse(json.textContent);
      return typeof event.id === "string" && typeof event.version === "number" ? event : null;
    } catch (err) {
      console.warn("unreadable PubSub item", item.getAttribute("id"), err);
      return null;
    }
  }

  function accept(event, live) {
    const known = events.get(event.id);
    if (known && known.version >= event.version) return; // the highest version wins (SPEC §4)
    events.set(event.id, event);
    render(event, live);
  }

  function formatTime(text) {
    const date = new Date(text);
    return isNaN(date) ? text : date.toLocaleString();
  }

  function cell(row, text, className) {
    const td = document.createElement("td");
    td.textContent = text;
    if (className) td.className = className;
    row.appendChild(td);
    return td;
  }

  function render(event, live) {
    const body = el("feed-rows");
    let row = body.querySelector(`tr[data-event-id="${CSS.escape(event.id)}"]`);
    if (row) row.remove();
    row = document.createElement("tr");
    row.dataset.eventId = event.id;
    row.dataset.status = event.status;
    row.dataset.type = event.type;
    cell(row, formatTime(event.updated_at));
    const what = event.type.replace("_", " ") + (event.zone_name ? ` · ${event.zone_name}` : "");
    cell(row, what, `type type-${event.type}`);
    cell(row, event.status, `status-${event.status}`);
    cell(row, `${event.lat.toFixed(5)}, ${event.lon.toFixed(5)}`);
    cell(row, (event.station_ids || []).join(", "));
    cell(row, `v${event.version}`);
    if (live) row.classList.add("fresh");
    insertSorted(body, row, event.updated_at);
    while (body.rows.length > MAX_ROWS) body.deleteRow(body.rows.length - 1);
    el("feed").hidden = false;
    el("empty").hidden = true;
    updateCounters();
  }

  function insertSorted(body, row, updatedAt) {
    for (const other of body.rows) {
      const otherEvent = events.get(other.dataset.eventId);
      if (otherEvent && otherEvent.updated_at < updatedAt) {
        body.insertBefore(row, other);
        return;
      }
    }
    body.appendChild(row);
  }

  function updateCounters() {
    const counts = { accident: 0, traffic_jam: 0, zone: 0, hazard: 0 };
    for (const event of events.values()) {
      if (event.type === "zone_enter" || event.type === "zone_exit") counts.zone += 1;
      else if (event.status === "active" && event.type in counts) counts[event.type] += 1;
    }
    for (const [key, value] of Object.entries(counts)) {
      const node = document.querySelector(`[data-counter="${key}"]`);
      if (node) node.textContent = String(value);
    }
  }

  function onPubsubMessage(message) {
    for (const items of message.getElementsByTagNameNS(NS_PUBSUB_EVENT, "items")) {
      for (const item of items.getElementsByTagName("item")) {
        const event = eventFromItem(item);
        if (event) accept(event, true);
      }
    }
    return true; // keep the handler
  }

  function loadNode(conn, node) {
    const iq = $iq({ type: "get", to: config.pubsub_service })
      .c("pubsub", { xmlns: NS_PUBSUB })
      .c("items", { node: node });
    conn.sendIQ(
      iq,
      (result) => {
        for (const item of result.getElementsByTagName("item")) {
          const event = eventFromItem(item);
          if (event) accept(event, false);
        }
      },
      (error) => console.warn("cannot read node", node, error),
    );
  }

  function subscribe(conn, node) {
    const iq = $iq({ type: "set", to: config.pubsub_service })
      .c("pubsub", { xmlns: NS_PUBSUB })
      .c("subscribe", { node: node, jid: conn.jid });
    conn.sendIQ(iq, null, (error) => console.warn("cannot subscribe to", node, error));
  }

  function onStatus(status) {
    const S = Strophe.Status;
    if (status === S.CONNECTED) {
      reconnectDelay = RECONNECT_MIN_MS;
      setConnectionState("live", "Live");
      connection.addHandler(onPubsubMessage, null, "message", null, null, config.pubsub_service);
      connection.send($pres());
      for (const node of config.pubsub_nodes) {
        subscribe(connection, node);
        loadNode(connection, node);
      }
    } else if (status === S.CONNECTING || status === S.AUTHENTICATING) {
      setConnectionState("connecting", "Connecting…");
    } else if (status === S.DISCONNECTED || status === S.CONNFAIL || status === S.AUTHFAIL) {
      setConnectionState("offline", "Offline — reconnecting…");
      scheduleReconnect();
    }
  }

  function scheduleReconnect() {
    if (reconnectTimer) return;
    reconnectTimer = setTimeout(() => {
      reconnectTimer = null;
      connect();
    }, reconnectDelay);
    reconnectDelay = Math.min(reconnectDelay * 2, RECONNECT_MAX_MS);
  }

  function connect() {
    // A relative path: the page and BOSH share Apache's origin, whatever its host and port.
    connection = new Strophe.Connection(config.bosh_path);
    connection.connect(config.anonymous_domain, null, onStatus);
  }

  window.addEventListener("pagehide", () => {
    if (connection && connection.connected) connection.disconnect("page closed");
  });

  document.addEventListener("DOMContentLoaded", async () => {
    Strophe.setLogLevel(Strophe.LogLevel.WARN); // its default traces every BOSH request
    await loadConfig();
    connect();
  });
})();
