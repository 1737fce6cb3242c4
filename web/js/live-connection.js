// The live feed over XMPP: an anonymous BOSH session (same origin, /http-bind) that subscribes to
// the PubSub nodes and reads their current items, and reconnects by itself with an exponential
// back-off whenever the session drops (docs/contract/xmpp.md §6, docs/contract/web.md §2).

const NS_PUBSUB = "http://jabber.org/protocol/pubsub";
const NS_PUBSUB_EVENT = "http://jabber.org/protocol/pubsub#event";
const NS_JSON = "urn:xmpp:json:0"; // XEP-0335 JSON containers

export const DEFAULT_CONFIG = {
  bosh_path: "/http-bind",
  xmpp_domain: "roadwatch.local",
  anonymous_domain: "anon.roadwatch.local",
  pubsub_service: "pubsub.roadwatch.local",
  pubsub_nodes: ["accident", "traffic_jam", "zone", "hazard"],
};

const RECONNECT_MIN_MS = 1000;
const RECONNECT_MAX_MS = 30000;
// Strophe retries a failed BOSH request once at once; after that the session is rebuilt with
// our own back-off, which tells the user what happens (its own retries wait up to a minute).
const BOSH_MAX_RETRIES = 1;

/** The event object of a PubSub <item> (XEP-0335 payload), or null if it holds none. */
export function eventFromItem(item) {
  const json = item.getElementsByTagNameNS(NS_JSON, "json")[0];
  if (!json) return null;
  try {
    // textContent, not Strophe.getText(): the latter returns XML-escaped text.
    const event = JSON.parse(json.textContent);
    return event && typeof event.id === "string" && typeof event.version === "number"
      ? event
      : null;
  } catch (err) {
    console.warn("unreadable PubSub item", item.getAttribute("id"), err);
    return null;
  }
}

/**
 * One self-healing live session. `onEvents(events, live)` receives parsed events (live=false for
 * the node items read after each (re)connection); `onState(state, info)` receives "connecting",
 * "live" or "offline" ({retryMs} when a reconnection is scheduled).
 */
export class LiveConnection {
  constructor(config, { onEvents, onState }) {
    this.config = { ...DEFAULT_CONFIG, ...config };
    this.onEvents = onEvents;
    this.onState = onState;
    this.connection = null;
    this.delay = RECONNECT_MIN_MS;
    this.timer = null;
    this.stopped = false;
  }

  start() {
    this.stopped = false;
    this.connect();
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
    this.timer = null;
    const connection = this.connection;
    this.connection = null;
    if (connection && connection.connected) connection.disconnect("page closed");
  }

  /** Reconnect now (the browser came back online, or the user asked). */
  reconnectNow() {
    if (this.stopped || (this.connection && this.connection.connected)) return;
    clearTimeout(this.timer);
    this.timer = null;
    this.connect();
  }

  connect() {
    if (this.stopped) return;
    this.onState("connecting", {});
    // A relative path: the page and BOSH share Apache's origin, whatever its host and port.
    const connection = new Strophe.Connection(this.config.bosh_path);
    connection.maxRetries = BOSH_MAX_RETRIES;
    this.connection = connection;
    connection.connect(this.config.anonymous_domain, null, (status, condition) =>
      this.onStatus(connection, status, condition),
    );
  }

  onStatus(connection, status, condition) {
    if (connection !== this.connection) return; // a session already given up
    const S = Strophe.Status;
    if (status === S.CONNECTED) {
      this.delay = RECONNECT_MIN_MS;
      connection.addHandler(
        (message) => this.onMessage(message),
        null,
        "message",
        null,
        null,
        this.config.pubsub_service,
      );
      connection.send($pres());
      // Subscribe first, then read the items: an event published in between arrives either
      // way, and the highest version wins.
      for (const node of this.config.pubsub_nodes) {
        this.subscribe(connection, node);
        this.loadItems(connection, node);
      }
      this.onState("live", {});
    } else if (
      status === S.DISCONNECTED ||
      status === S.CONNFAIL ||
      status === S.AUTHFAIL ||
      status === S.CONNTIMEOUT ||
      status === S.ERROR
    ) {
      if (condition) console.warn("live session ended:", condition);
      this.scheduleReconnect();
    }
  }

  scheduleReconnect() {
    if (this.stopped || this.timer) return;
    // Forget the failed session: whatever it reports from now on is ignored.
    this.connection = null;
    // A little jitter, so pages cut off together do not all come back in the same instant.
    const retryMs = Math.round(this.delay * (0.8 + Math.random() * 0.4));
    this.delay = Math.min(this.delay * 2, RECONNECT_MAX_MS);
    this.onState("offline", { retryMs });
    this.timer = setTimeout(() => {
      this.timer = null;
      this.connect();
    }, retryMs);
  }

  onMessage(message) {
    const events = [];
    for (const items of message.getElementsByTagNameNS(NS_PUBSUB_EVENT, "items")) {
      for (const item of items.getElementsByTagName("item")) {
        const event = eventFromItem(item);
        if (event) events.push(event);
      }
    }
    if (events.length) this.onEvents(events, true);
    return true; // keep the handler
  }

  loadItems(connection, node) {
    const iq = $iq({ type: "get", to: this.config.pubsub_service })
      .c("pubsub", { xmlns: NS_PUBSUB })
      .c("items", { node });
    connection.sendIQ(
      iq,
      (result) => {
        const events = [];
        for (const item of result.getElementsByTagName("item")) {
          const event = eventFromItem(item);
          if (event) events.push(event);
        }
        this.onEvents(events, false);
      },
      (error) => console.warn("cannot read node", node, error && error.outerHTML),
    );
  }

  subscribe(connection, node) {
    const iq = $iq({ type: "set", to: this.config.pubsub_service })
      .c("pubsub", { xmlns: NS_PUBSUB })
      .c("subscribe", { node, jid: connection.jid });
    connection.sendIQ(iq, null, (error) =>
      console.warn("cannot subscribe to", node, error && error.outerHTML),
    );
  }
}
