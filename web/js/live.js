// The live page: a map of the active events and a feed of events as they happen. The current
// state comes from the PubSub node items (and the REST API), then updates arrive live over BOSH.
// Event text only ever goes through textContent: nothing a vehicle or a zone name holds can run.

import { getJSON } from "./api.js";
import { createBaseMap } from "./basemap.js";
import {
  addMessages,
  formatDateTime,
  formatNumber,
  formatTime,
  hasMessage,
  onLanguageChange,
  t,
} from "./i18n.js";
import { DEFAULT_CONFIG, LiveConnection } from "./live-connection.js";
import { CrossingWindow, Pacer, RenderQueue, SlidingBudget } from "./live-queue.js";
import { initShell } from "./shell.js";

const MAX_ROWS = 200; // the feed shows the newest rows only, and keeps as many of each kind
const FEED_KINDS = ["accident", "traffic_jam", "hazard", "zone"];
const HIDDEN_KINDS_KEY = "roadwatch.live.hiddenKinds";
const NARROW_SCREEN = "(max-width: 600px)"; // as the stylesheet's phone layout
const NARROW_ROWS_STEP = 30; // rows shown at first, and added by "Show more", on a phone
const MAX_STATIONS_SHOWN = 10;
const ACTIVE_EVENTS_LIMIT = 1000; // the REST API's own maximum page size
const CLEARED_LINGER_MS = 20_000; // a cleared event fades on the map, then leaves it
const ZONE_MARKER_MS = 60_000; // a zone crossing shows on the map this long
const ZONE_COUNTER_WINDOW_MS = 3_600_000;
// Events are drawn once per animation frame, for at most this long (and at least
// MIN_PER_FRAME events): a flood of events never freezes the page; the rest waits a frame.
const FRAME_BUDGET_MS = 8;
const MIN_PER_FRAME = 20;
// While more than CALM_CROSSINGS_PER_S zone crossings a second are drawn, they are drawn in
// groups CROSSING_GROUP_MS apart: the feed then moves a few times a second, not at every frame
// (nobody reads hundreds of rows a second, and each move costs a layout and a repaint).
// Accidents, jams and hazards never wait.
const CALM_CROSSINGS_PER_S = 20;
const CROSSING_GROUP_MS = 250;
// Zone crossings on the map at once, the newest: a marker for each one of a minute of heavy
// traffic would be thousands. Beyond CROSSING_MARKERS_PER_S new ones a second, crossings show
// in the feed only: markers replaced faster than that are only flicker.
const MAX_ZONE_MARKERS = MAX_ROWS;
const CROSSING_MARKERS_PER_S = 20;
// Highlights of zone crossings (a new row's flash, a new marker's pulse) running at once, at
// most: past that a flood keeps the whole feed and map repainting, and says nothing more.
// Accidents, jams and hazards always get theirs. The durations are the stylesheet's.
const MAX_CROSSING_HIGHLIGHTS = 12;
const ROW_FLASH_MS = 2_000;
const MARKER_PULSE_MS = 3_600;
// Past this many events waiting (a hidden tab draws no frame), the crossings that would never
// show are forgotten at once.
const MAX_PENDING = 4 * MAX_ROWS;
// Crossing ids remembered so that reading the node items again (a reconnection) counts none
// twice; far more than a node keeps (deploy/prosody's pubsub_max_items).
const CROSSING_IDS_KEPT = 20_000;
const MAP_SWEEP_MS = 1000; // how often faded and expired markers are taken off the map
const ANNOUNCE_MAX = 3;
const MARKER_SIZE = 18;
const MARKER_Z = { accident: 400, hazard: 300, traffic_jam: 200, zone_enter: 100, zone_exit: 100 };
const JAM_STYLE = {
  color: "#ef6c00",
  weight: 2,
  fillColor: "#ef6c00",
  fillOpacity: 0.35,
  className: "jam-extent",
};
const JAM_CLEARED_STYLE = { opacity: 0.35, fillOpacity: 0.1 };

addMessages({
  en: {
    "live.title": "RoadWatch — live road events",
    "live.heading": "Live road events",
    "live.counters": "Active events",
    "live.counter.accident": "Active accidents",
    "live.counter.traffic_jam": "Active jams",
    "live.counter.hazard": "Active hazards",
    "live.counter.zone": "Zone crossings (last hour)",
    "live.map": "Map of active events",
    "live.map_label": "Map of the road network with the active events",
    "live.feed": "Live feed",
    "live.feed_caption": "Road events, newest first",
    "live.empty": "No event yet. Events appear here the moment they are detected.",
    "live.all_filtered": "Every event in the feed is of a kind hidden above.",
    "live.filter.legend": "Show on the map and in the feed",
    "live.filter.accident": "Accidents",
    "live.filter.traffic_jam": "Jams",
    "live.filter.hazard": "Hazards",
    "live.filter.zone": "Zone crossings",
    "live.show_more": "Show {count} more",
    "live.rows_shown": "{shown} of {total} events shown",
    "live.col.time": "Updated",
    "live.col.event": "Event",
    "live.col.status": "Status",
    "live.show_on_map": "(show details on the map)",
    "live.state.connecting": "Connecting…",
    "live.state.live": "Live",
    "live.state.offline": "Connection lost — reconnecting in {seconds} s",
    "live.announce": "New event: {what}",
    "live.marker": "{type}, {status}: {where}",
    "live.vehicles": { one: "{count} vehicle", other: "{count} vehicles" },
    "live.more_stations": "+{count} more",
    "live.inside": { one: "{count} vehicle inside", other: "{count} vehicles inside" },
    "detail.status": "Status",
    "detail.started": "Started",
    "detail.updated": "Updated",
    "detail.ended": "Ended",
    "detail.zone": "Zone",
    "detail.stations": "Stations",
    "detail.vehicles": "Vehicles",
    "detail.mean_speed": "Mean speed",
    "detail.reporters": "Reports",
    "detail.cause": "Cause",
    "detail.reason": "Reason",
    "detail.position": "Position",
    "detail.position_value": "{lat}, {lon}",
    "detail.version": "Version",
    "reason.timeout": "no message for 10 minutes",
    "reason.merged": "merged into another jam",
    "reason.expired": "no recent report",
    "reason.terminated": "ended by a road operator",
    "reason.cancelled": "withdrawn by its reporters",
  },
  fr: {
    "live.title": "RoadWatch — événements routiers en direct",
    "live.heading": "Événements routiers en direct",
    "live.counters": "Événements en cours",
    "live.counter.accident": "Accidents en cours",
    "live.counter.traffic_jam": "Embouteillages en cours",
    "live.counter.hazard": "Dangers en cours",
    "live.counter.zone": "Passages de zone (dernière heure)",
    "live.map": "Carte des événements en cours",
    "live.map_label": "Carte du réseau routier avec les événements en cours",
    "live.feed": "Fil en direct",
    "live.feed_caption": "Événements routiers, les plus récents d’abord",
    "live.empty":
      "Aucun événement pour l’instant. Les événements apparaissent ici dès qu’ils sont détectés.",
    "live.all_filtered": "Tous les événements du fil sont d’un type masqué ci-dessus.",
    "live.filter.legend": "Afficher sur la carte et dans le fil",
    "live.filter.accident": "Accidents",
    "live.filter.traffic_jam": "Embouteillages",
    "live.filter.hazard": "Dangers",
    "live.filter.zone": "Passages de zone",
    "live.show_more": "Afficher {count} de plus",
    "live.rows_shown": "{shown} événements affichés sur {total}",
    "live.col.time": "Mise à jour",
    "live.col.event": "Événement",
    "live.col.status": "État",
    "live.show_on_map": "(voir le détail sur la carte)",
    "live.state.connecting": "Connexion…",
    "live.state.live": "En direct",
    "live.state.offline": "Connexion perdue — nouvel essai dans {seconds} s",
    "live.announce": "Nouvel événement : {what}",
    "live.marker": "{type}, {status} : {where}",
    "live.vehicles": { one: "{count} véhicule", other: "{count} véhicules" },
    "live.more_stations": "+{count} autres",
    "live.inside": {
      one: "{count} véhicule dans la zone",
      other: "{count} véhicules dans la zone",
    },
    "detail.status": "État",
    "detail.started": "Début",
    "detail.updated": "Mise à jour",
    "detail.ended": "Fin",
    "detail.zone": "Zone",
    "detail.stations": "Stations",
    "detail.vehicles": "Véhicules",
    "detail.mean_speed": "Vitesse moyenne",
    "detail.reporters": "Signalements",
    "detail.cause": "Cause",
    "detail.reason": "Motif",
    "detail.position": "Position",
    "detail.position_value": "{lat} ; {lon}", // the decimal comma needs another separator
    "detail.version": "Version",
    "reason.timeout": "aucun message depuis 10 minutes",
    "reason.merged": "fusionné avec un autre embouteillage",
    "reason.expired": "aucun signalement récent",
    "reason.terminated": "terminé par un exploitant routier",
    "reason.cancelled": "retiré par ses auteurs",
  },
});

const events = new Map(); // id -> the highest version seen
// The feed's rows, newest first as in the DOM: {id, kind, time, row}; `time` is where the row
// was placed (a row holding the focus is updated in place, not moved).
const feed = [];
const rows = new Map(); // id -> its entry of `feed`
const rowsPerKind = new Map(); // kind -> rows in the feed
const drawn = new Map(); // id -> {marker, extent, expires} on the map
const zoneMarkers = new Set(); // ids of the crossings on the map, oldest first
const queue = new RenderQueue();
const crossings = new CrossingWindow(ZONE_COUNTER_WINDOW_MS, CROSSING_IDS_KEPT);
const activeCounts = { accident: 0, traffic_jam: 0, hazard: 0 };
let frameRequested = false;
let frameTimer = null;
let highlightNext = []; // rows whose highlight restarts at the next frame
const crossingMarkers = new SlidingBudget(1_000, CROSSING_MARKERS_PER_S);
const crossingFlashes = new SlidingBudget(ROW_FLASH_MS, MAX_CROSSING_HIGHLIGHTS);
const crossingPulses = new SlidingBudget(MARKER_PULSE_MS, MAX_CROSSING_HIGHLIGHTS);
const crossingPacer = new Pacer(CALM_CROSSINGS_PER_S, CROSSING_GROUP_MS);
let base = null; // {map, ...} once the base map is ready
let eventsLayer = null;
let connectionState = { state: "connecting", info: {} };
let openPopupEventId = null;
// zone id -> the stations inside it now: the API's occupancy at load, then the live crossings.
const occupancy = new Map();
const hiddenKinds = loadHiddenKinds(); // kinds left out of the feed, the map and announcements
const narrowScreen = window.matchMedia(NARROW_SCREEN);
let narrowRowsShown = NARROW_ROWS_STEP;

const el = (id) => document.getElementById(id);
const timeOf = (event) => Date.parse(event.updated_at) || 0;
const isZoneEvent = (event) => event.type === "zone_enter" || event.type === "zone_exit";
// The kind a reader filters on: both zone crossings are one kind, as in the counters.
const kindOf = (event) => (isZoneEvent(event) ? "zone" : event.type);
const isShownKind = (event) => !hiddenKinds.has(kindOf(event));

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

function typeLabel(event) {
  return hasMessage(`type.${event.type}`) ? t(`type.${event.type}`) : event.type;
}

function statusLabel(event) {
  return hasMessage(`status.${event.status}`) ? t(`status.${event.status}`) : event.status;
}

function stationsSummary(event, shown = 3) {
  const ids = event.station_ids || [];
  if (ids.length <= shown) return ids.join(", ");
  const more = t("live.more_stations", { count: ids.length - shown });
  return `${ids.slice(0, shown).join(", ")} ${more}`;
}

function speedText(value) {
  return t("units.kmh", { value: formatNumber(value, { maximumFractionDigits: 0 }) });
}

/** A short description: where the event is and what it involves. */
function whereText(event) {
  const details = event.details || {};
  const parts = [];
  if (event.zone_name) parts.push(event.zone_name);
  if (event.type === "traffic_jam") {
    if (typeof details.vehicle_count === "number") {
      parts.push(t("live.vehicles", { count: details.vehicle_count }));
    }
    if (typeof details.mean_speed_kmh === "number") parts.push(speedText(details.mean_speed_kmh));
  } else if (event.type === "hazard" && hasMessage(`cause.${event.cause_code}`)) {
    parts.push(t(`cause.${event.cause_code}`));
  }
  if (event.type !== "traffic_jam") {
    const stations = stationsSummary(event);
    if (stations) parts.push(stations);
  }
  return parts.join(" · ");
}

function feedTimeText(event) {
  const date = new Date(event.updated_at);
  const today = new Date();
  return date.toDateString() === today.toDateString()
    ? formatTime(event.updated_at)
    : formatDateTime(event.updated_at, { dateStyle: "short", timeStyle: "short" });
}

// ---- Details ---------------------------------------------------------------------------------

function reasonText(reason) {
  return hasMessage(`reason.${reason}`) ? t(`reason.${reason}`) : String(reason);
}

/** The details of an event as DOM nodes (a popup's content). */
function detailsNode(event) {
  const details = event.details || {};
  const box = element("div", "event-popup");
  box.dataset.eventId = event.id;
  const title = element("h3");
  title.append(element("span", `type type-${event.type}`, typeLabel(event)));
  if (event.zone_name) title.append(" · ", element("span", "zone-name", event.zone_name));
  const list = element("dl");
  const add = (key, value) => {
    if (value === undefined || value === null || value === "") return;
    list.append(element("dt", null, t(key)), element("dd", null, value));
  };
  add("detail.status", statusLabel(event));
  add("detail.started", formatDateTime(event.started_at));
  add("detail.updated", formatDateTime(event.updated_at));
  if (event.ended_at) add("detail.ended", formatDateTime(event.ended_at));
  add("detail.zone", event.zone_name);
  if (typeof details.vehicle_count === "number") {
    add("detail.vehicles", formatNumber(details.vehicle_count));
  }
  if (typeof details.mean_speed_kmh === "number") {
    add("detail.mean_speed", speedText(details.mean_speed_kmh));
  }
  if (typeof details.reporter_count === "number" && event.type !== "traffic_jam") {
    add("detail.reporters", formatNumber(details.reporter_count));
  }
  if (event.type === "hazard" && event.cause_code !== null && event.cause_code !== undefined) {
    const cause = hasMessage(`cause.${event.cause_code}`) ? t(`cause.${event.cause_code}`) : "";
    add("detail.cause", cause ? `${cause} (${event.cause_code})` : String(event.cause_code));
  }
  if (details.reason) add("detail.reason", reasonText(details.reason));
  add("detail.stations", stationsSummary(event, MAX_STATIONS_SHOWN));
  if (Number.isFinite(event.lat) && Number.isFinite(event.lon)) {
    const coordinate = { minimumFractionDigits: 5, maximumFractionDigits: 5 };
    const lat = formatNumber(event.lat, coordinate);
    const lon = formatNumber(event.lon, coordinate);
    add("detail.position", t("detail.position_value", { lat, lon }));
  }
  add("detail.version", formatNumber(event.version));
  box.append(title, list);
  return box;
}

// ---- Feed ------------------------------------------------------------------------------------

function fillRow(row, event) {
  row.dataset.eventId = event.id;
  row.dataset.type = event.type;
  row.dataset.kind = kindOf(event);
  row.dataset.status = event.status;
  row.dataset.version = String(event.version);
  const when = element("time", null, feedTimeText(event));
  when.dateTime = event.updated_at;
  when.title = formatDateTime(event.updated_at);
  const show = element("button", `show-on-map type type-${event.type}`, typeLabel(event));
  show.type = "button";
  show.append(element("span", "visually-hidden", ` ${t("live.show_on_map")}`));
  const eventCell = element("td");
  eventCell.append(show, element("span", "where", whereText(event)));
  const statusCell = element("td");
  statusCell.append(element("span", `status status-${event.status}`, statusLabel(event)));
  const timeCell = element("td");
  timeCell.append(when);
  row.replaceChildren(timeCell, eventCell, statusCell);
}

/** Where a row of `time` goes: before the first row not newer (the last to come goes on top). */
function feedIndex(time) {
  let lo = 0;
  let hi = feed.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (feed[mid].time <= time) hi = mid;
    else lo = mid + 1;
  }
  return lo;
}

function insertRow(entry) {
  const index = feedIndex(entry.time);
  const next = feed[index];
  el("feed-rows").insertBefore(entry.row, next ? next.row : null);
  feed.splice(index, 0, entry);
  rowsPerKind.set(entry.kind, (rowsPerKind.get(entry.kind) || 0) + 1);
}

function detachRow(entry) {
  // The first row not newer than the entry, then along the rows of the same time.
  let lo = 0;
  let hi = feed.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (feed[mid].time > entry.time) lo = mid + 1;
    else hi = mid;
  }
  let index = lo;
  while (index < feed.length && feed[index] !== entry && feed[index].time === entry.time) {
    index += 1;
  }
  if (feed[index] !== entry) index = feed.indexOf(entry);
  if (index >= 0) feed.splice(index, 1);
  entry.row.remove();
  rowsPerKind.set(entry.kind, (rowsPerKind.get(entry.kind) || 1) - 1);
}

function renderRow(event, live) {
  const isFresh = live && (!isZoneEvent(event) || crossingFlashes.take(Date.now()));
  let entry = rows.get(event.id);
  if (!entry) {
    const row = document.createElement("tr");
    fillRow(row, event);
    if (isFresh) row.classList.add("fresh"); // a new element: its highlight starts by itself
    entry = { id: event.id, kind: kindOf(event), time: timeOf(event), row };
    rows.set(event.id, entry);
    insertRow(entry);
    return;
  }
  const focused = entry.row.contains(document.activeElement);
  fillRow(entry.row, event);
  const time = timeOf(event);
  if (!focused && time !== entry.time) {
    // Moving a focused row would drop the focus: it stays where it is.
    detachRow(entry);
    entry.time = time;
    insertRow(entry);
  }
  if (isFresh) {
    // Off now, on again at the next frame: the highlight restarts without forcing a layout.
    entry.row.classList.remove("fresh");
    highlightNext.push(entry.row);
  }
}

function trimFeed() {
  // Up to MAX_ROWS of each kind: a stream of zone crossings never pushes an accident out of a
  // feed that hides them. The oldest rows go.
  let over = false;
  for (const count of rowsPerKind.values()) over ||= count > MAX_ROWS;
  if (!over) return false;
  const removed = [];
  let kept = 0;
  for (let index = feed.length - 1; index >= 0; index -= 1) {
    const entry = feed[index];
    if ((rowsPerKind.get(entry.kind) || 0) > MAX_ROWS) {
      rowsPerKind.set(entry.kind, rowsPerKind.get(entry.kind) - 1);
      entry.row.remove();
      rows.delete(entry.id);
      removed.push(entry.id);
      feed[index] = null;
    } else {
      kept += 1;
    }
  }
  let write = 0;
  for (const entry of feed) if (entry) feed[write++] = entry;
  feed.length = kept;
  for (const id of removed) forgetIfIdle(id);
  return true;
}

/** Show the newest rows of the kinds chosen: MAX_ROWS, or fewer on a phone until asked. */
function applyFeedView() {
  const limit = narrowScreen.matches ? narrowRowsShown : MAX_ROWS;
  let matching = 0;
  for (const { kind, row } of feed) {
    const wanted = !hiddenKinds.has(kind);
    if (wanted) matching += 1;
    // A row holding the focus stays, or the keyboard user would be thrown back to the top.
    const hidden = !wanted || (matching > limit && !row.contains(document.activeElement));
    if (row.hidden !== hidden) row.hidden = hidden;
  }
  const shown = Math.min(matching, limit);
  const none = feed.length === 0;
  el("feed").hidden = shown === 0;
  el("feed").parentElement.hidden = shown === 0;
  el("empty").hidden = !none;
  el("all-filtered").hidden = none || matching > 0;
  const more = narrowScreen.matches && matching > limit;
  el("feed-more").hidden = !more;
  if (more) {
    el("feed-count").textContent = t("live.rows_shown", { shown, total: matching });
    el("show-more").textContent = t("live.show_more", {
      count: Math.min(NARROW_ROWS_STEP, matching - limit),
    });
  }
}

function showMoreRows() {
  const firstNew = [...el("feed-rows").rows].find(
    (row) => row.hidden && !hiddenKinds.has(row.dataset.kind),
  );
  narrowRowsShown += NARROW_ROWS_STEP;
  applyFeedView();
  // The button goes once everything shows: the focus moves on to the first row it revealed.
  if (el("feed-more").hidden && firstNew) firstNew.querySelector("button")?.focus();
}

function forgetIfIdle(id) {
  const event = events.get(id);
  if (event && event.status !== "active" && !rows.has(id) && !drawn.has(id) && !queue.has(id)) {
    events.delete(id);
  }
}

// ---- Map -------------------------------------------------------------------------------------

function markerLabel(event) {
  return t("live.marker", {
    type: typeLabel(event),
    status: statusLabel(event),
    where: whereText(event) || "—",
  });
}

function markerIcon(event, pulse = true) {
  const dot = element("span", `event-marker type-${event.type}`);
  if (event.status === "cleared") dot.classList.add("cleared");
  if (!pulse) dot.classList.add("calm");
  return L.divIcon({
    className: "event-icon",
    html: dot,
    iconSize: [MARKER_SIZE, MARKER_SIZE],
    popupAnchor: [0, -MARKER_SIZE / 2],
  });
}

function labelMarker(marker, event) {
  const icon = marker.getElement();
  if (!icon) return;
  icon.dataset.eventId = event.id;
  icon.dataset.type = event.type;
  icon.dataset.status = event.status;
  icon.setAttribute("role", "button");
  icon.setAttribute("aria-label", markerLabel(event));
}

function popupFor(id) {
  // A function: the popup is built from the latest version each time it opens.
  return () => {
    const event = events.get(id);
    return event ? detailsNode(event) : element("p", null, t("common.unknown"));
  };
}

function shouldShow(event, isLive) {
  if (!Number.isFinite(event.lat) || !Number.isFinite(event.lon)) return false;
  if (event.status === "active") return true;
  if (isZoneEvent(event)) return isLive || Date.now() - timeOf(event) < ZONE_MARKER_MS;
  return false;
}

function removeFromMap(id) {
  const entry = drawn.get(id);
  if (!entry) return;
  eventsLayer.removeLayer(entry.marker);
  if (entry.extent) eventsLayer.removeLayer(entry.extent);
  drawn.delete(id);
  zoneMarkers.delete(id);
  forgetIfIdle(id);
}

/** Take faded cleared events and old crossings off the map (one sweep, not a timer each). */
function sweepMap() {
  const now = Date.now();
  for (const [id, entry] of drawn) {
    if (entry.expires !== null && entry.expires <= now) removeFromMap(id);
  }
}

function trimZoneMarkers() {
  for (const id of zoneMarkers) {
    if (zoneMarkers.size <= MAX_ZONE_MARKERS) break;
    removeFromMap(id); // the oldest first: a Set iterates in insertion order
  }
}

function drawExtent(entry, event) {
  if (entry.extent) eventsLayer.removeLayer(entry.extent);
  entry.extent = null;
  const extent = event.details && event.details.extent;
  if (event.type !== "traffic_jam" || !extent || !extent.type) return;
  try {
    entry.extent = L.geoJSON(extent, { style: () => JAM_STYLE }).bindPopup(popupFor(event.id));
  } catch (err) {
    console.warn("unreadable jam extent", event.id, err);
    return;
  }
  entry.extent.addTo(eventsLayer);
  entry.extent.eachLayer((layer) => {
    const path = layer.getElement && layer.getElement();
    if (path) path.dataset.eventId = event.id;
  });
  if (event.status === "cleared") entry.extent.setStyle(JAM_CLEARED_STYLE);
}

function drawOnMap(event, isLive) {
  if (!base) return;
  let entry = drawn.get(event.id);
  if (!entry && !shouldShow(event, isLive)) return;
  const now = Date.now();
  // The budget is for live crossings: those read at load are few (the last minute's, at most
  // MAX_ZONE_MARKERS) and must not leave the next live crossing without its marker.
  if (!entry && isZoneEvent(event) && isLive && !crossingMarkers.take(now)) return;
  if (!entry) {
    const marker = L.marker([event.lat, event.lon], {
      icon: markerIcon(event, !isZoneEvent(event) || crossingPulses.take(now)),
      keyboard: true,
      riseOnHover: true,
      zIndexOffset: MARKER_Z[event.type] || 0,
    }).bindPopup(popupFor(event.id));
    marker.addTo(eventsLayer);
    entry = { marker, extent: null, expires: null };
    drawn.set(event.id, entry);
    if (isZoneEvent(event)) zoneMarkers.add(event.id);
  } else {
    entry.marker.setLatLng([event.lat, event.lon]);
    entry.marker.setIcon(markerIcon(event, !isZoneEvent(event)));
    if (entry.marker.isPopupOpen()) entry.marker.setPopupContent(popupFor(event.id));
  }
  labelMarker(entry.marker, event);
  drawExtent(entry, event);
  entry.expires = null;
  if (event.status === "cleared") {
    entry.expires = Date.now() + CLEARED_LINGER_MS;
  } else if (isZoneEvent(event)) {
    const left = Math.max(ZONE_MARKER_MS - Math.max(Date.now() - timeOf(event), 0), 5_000);
    entry.expires = Date.now() + (isLive ? ZONE_MARKER_MS : left);
  }
}

/** Show an event's details on the map (from the feed): its marker's popup, or a plain popup. */
function showOnMap(id) {
  const event = events.get(id);
  if (!event || !base) return;
  const entry = drawn.get(id);
  if (entry) {
    base.map.panTo(entry.marker.getLatLng());
    entry.marker.openPopup();
  } else if (Number.isFinite(event.lat) && Number.isFinite(event.lon)) {
    L.popup({ eventId: id })
      .setLatLng([event.lat, event.lon])
      .setContent(popupFor(id))
      .openOn(base.map);
  }
}

// ---- Counters, status, announcements ------------------------------------------------------------

function countActive(event, delta) {
  if (event.status === "active" && event.type in activeCounts) activeCounts[event.type] += delta;
}

function updateCounters() {
  const counts = { ...activeCounts, zone: crossings.count(Date.now()) };
  for (const [key, value] of Object.entries(counts)) {
    const node = document.querySelector(`[data-counter="${key}"]`);
    const text = formatNumber(value);
    if (node && node.textContent !== text) node.textContent = text;
  }
}

function showState(state, info) {
  connectionState = { state, info };
  const node = el("connection");
  node.dataset.state = state;
  node.textContent =
    state === "offline"
      ? t("live.state.offline", { seconds: Math.max(1, Math.round((info.retryMs || 0) / 1000)) })
      : t(`live.state.${state}`);
}

function announce(newEvents) {
  const important = newEvents.filter((event) => !isZoneEvent(event) && isShownKind(event));
  if (!important.length) return;
  el("announcer").textContent = important
    .slice(0, ANNOUNCE_MAX)
    .map((event) => t("live.announce", { what: [typeLabel(event), whereText(event)].join(", ") }))
    .join(" ");
}

// ---- Zone occupancy -----------------------------------------------------------------------------

function trackOccupancy(event, known) {
  if (!isZoneEvent(event) || !event.zone_id || known) return; // each crossing counts once
  if (!occupancy.has(event.zone_id)) occupancy.set(event.zone_id, new Map());
  const inside = occupancy.get(event.zone_id);
  const time = timeOf(event);
  for (const station of event.station_ids || []) {
    const last = inside.get(station);
    if (last && last.time > time) continue; // an older crossing arriving late changes nothing
    inside.set(station, { time, inside: event.type === "zone_enter" });
  }
}

function occupancyText(properties) {
  const inside = occupancy.get(String(properties.id));
  if (!inside) return "";
  let count = 0;
  for (const state of inside.values()) if (state.inside) count += 1;
  return t("live.inside", { count });
}

async function loadOccupancy(zones) {
  await Promise.all(
    (zones.features || []).map(async (feature) => {
      const id = String(feature.properties.id);
      try {
        const answer = await getJSON(`/api/zones/${encodeURIComponent(id)}/occupancy`);
        if (!occupancy.has(id)) occupancy.set(id, new Map());
        const inside = occupancy.get(id);
        for (const occupant of answer.stations || []) {
          const time = Date.parse(occupant.since) || 0;
          const last = inside.get(occupant.station_id);
          if (!last || last.time <= time) inside.set(occupant.station_id, { time, inside: true });
        }
      } catch (err) {
        console.warn("occupancy unavailable for zone", id, err.message);
      }
    }),
  );
}

// ---- Incoming events ---------------------------------------------------------------------------

function accept(incoming, isLive) {
  let changed = false;
  for (const event of incoming) {
    const known = events.get(event.id);
    // The highest version wins (docs/contract/events.md §4).
    if (known && known.version >= event.version) continue;
    trackOccupancy(event, known);
    if (known) countActive(known, -1);
    countActive(event, 1);
    if (isZoneEvent(event)) crossings.add(event.id, timeOf(event));
    events.set(event.id, event);
    queue.put(event, isLive);
    changed = true;
  }
  if (!changed) return;
  if (queue.size > MAX_PENDING) dropHiddenCrossings();
  requestFrame();
}

function requestFrame() {
  if (frameRequested) return;
  frameRequested = true;
  requestAnimationFrame(drawFrame);
}

function requestFrameIn(delayMs) {
  if (frameTimer) return;
  frameTimer = setTimeout(() => {
    frameTimer = null;
    requestFrame();
  }, delayMs);
}

const isShown = (id) => rows.has(id) || drawn.has(id);

function dropHiddenCrossings() {
  for (const id of queue.dropHidden(isShown, MAX_ROWS)) forgetIfIdle(id);
}

/** Draw what arrived since the last frame, within the frame's budget; the rest waits. */
function drawFrame() {
  frameRequested = false;
  const started = performance.now();
  for (const row of highlightNext) row.classList.add("fresh");
  highlightNext = [];
  dropHiddenCrossings();
  const crossingWait = crossingPacer.wait(started);
  const newlyLive = [];
  let done = 0;
  let crossingsDone = 0;
  let crossingsHeld = false;
  for (const { event, live } of queue.ordered()) {
    if (done >= MIN_PER_FRAME && performance.now() - started > FRAME_BUDGET_MS) break;
    if (isZoneEvent(event)) {
      // Crossings come after everything else in this order: the rest of the queue waits.
      crossingsHeld = crossingWait > 0;
      if (crossingsHeld) break;
      crossingsDone += 1;
    }
    queue.delete(event.id);
    if (live && event.version === 1 && event.status !== "cleared") newlyLive.push(event);
    renderRow(event, live);
    drawOnMap(event, live);
    done += 1;
  }
  if (done) {
    trimFeed();
    trimZoneMarkers();
    applyFeedView();
    announce(newlyLive);
  }
  crossingPacer.drew(started, crossingsDone);
  updateCounters();
  if (highlightNext.length || (queue.size && !crossingsHeld)) requestFrame();
  else if (crossingsHeld) requestFrameIn(crossingWait);
}

function rerenderAll() {
  for (const [id, entry] of rows) {
    const event = events.get(id);
    if (event) fillRow(entry.row, event);
  }
  for (const [id, entry] of drawn) {
    const event = events.get(id);
    if (event) labelMarker(entry.marker, event);
  }
  if (base && openPopupEventId) {
    base.map.eachLayer((layer) => {
      if (layer instanceof L.Popup && layer.isOpen()) layer.setContent(popupFor(openPopupEventId));
    });
  }
  updateCounters();
  applyFeedView();
  showState(connectionState.state, connectionState.info);
}

// ---- Kinds shown ------------------------------------------------------------------------------

function loadHiddenKinds() {
  try {
    const stored = JSON.parse(window.localStorage.getItem(HIDDEN_KINDS_KEY) || "[]");
    return new Set(Array.isArray(stored) ? stored.filter((kind) => FEED_KINDS.includes(kind)) : []);
  } catch {
    return new Set(); // storage disabled or unreadable: every kind shows
  }
}

function saveHiddenKinds() {
  try {
    window.localStorage.setItem(HIDDEN_KINDS_KEY, JSON.stringify([...hiddenKinds]));
  } catch {
    // Not remembered, but the choice still applies to this page.
  }
}

/** Hide the map's markers (and jam extents) of the hidden kinds, by a class per kind. */
function applyMapKinds() {
  const map = el("map");
  for (const kind of FEED_KINDS) map.classList.toggle(`hide-${kind}`, hiddenKinds.has(kind));
  const open = openPopupEventId && events.get(openPopupEventId);
  if (base && open && !isShownKind(open)) base.map.closePopup();
}

function wireKindFilter() {
  const boxes = el("kind-filter").querySelectorAll("input[data-kind]");
  for (const box of boxes) {
    box.checked = !hiddenKinds.has(box.dataset.kind);
    box.addEventListener("change", () => {
      if (box.checked) hiddenKinds.delete(box.dataset.kind);
      else hiddenKinds.add(box.dataset.kind);
      saveHiddenKinds();
      applyMapKinds();
      applyFeedView();
    });
  }
  applyMapKinds();
}

// ---- Start -------------------------------------------------------------------------------------

async function loadConfig() {
  try {
    return { ...DEFAULT_CONFIG, ...(await getJSON("/api/client-config")) };
  } catch (err) {
    console.warn("client config unavailable, using defaults:", err.message);
    return DEFAULT_CONFIG;
  }
}

async function loadActiveEvents() {
  // A complement to the node items: the archive's view of what is active right now.
  try {
    const page = await getJSON("/api/events", { status: "active", limit: ACTIVE_EVENTS_LIMIT });
    accept(page.items || [], false);
  } catch (err) {
    console.warn("active events unavailable from the API:", err.message);
  }
}

async function startMap() {
  try {
    base = await createBaseMap(el("map"), { zoneDetails: occupancyText });
  } catch (err) {
    console.warn("map unavailable:", err.message);
    return;
  }
  eventsLayer = L.layerGroup().addTo(base.map);
  base.map.on("popupopen", (e) => {
    const content = e.popup.getElement && e.popup.getElement();
    const box = content && content.querySelector(".event-popup");
    openPopupEventId = box ? box.dataset.eventId : null;
  });
  base.map.on("popupclose", () => {
    openPopupEventId = null;
  });
  // Events that arrived before the map was ready.
  for (const event of events.values()) drawOnMap(event, false);
  await loadOccupancy(base.zones);
}

function wireFeed() {
  el("feed-rows").addEventListener("click", (e) => {
    const row = e.target.closest("tr[data-event-id]");
    if (row) showOnMap(row.dataset.eventId);
  });
  el("show-more").addEventListener("click", showMoreRows);
  narrowScreen.addEventListener("change", applyFeedView);
  wireKindFilter();
}

async function main() {
  initShell("live");
  Strophe.setLogLevel(Strophe.LogLevel.WARN); // its default traces every BOSH request
  showState("connecting", {});
  wireFeed();
  onLanguageChange(rerenderAll);
  setInterval(updateCounters, 60_000); // zone crossings age out of the last hour
  setInterval(sweepMap, MAP_SWEEP_MS);
  const mapReady = startMap();
  const config = await loadConfig();
  const live = new LiveConnection(config, { onEvents: accept, onState: showState });
  live.start();
  window.addEventListener("online", () => live.reconnectNow());
  window.addEventListener("pagehide", () => live.stop());
  window.addEventListener("pageshow", (e) => {
    if (e.persisted) live.start(); // back from the back/forward cache
  });
  await Promise.all([mapReady, loadActiveEvents()]);
}

main();
