// History page: past events from GET /api/events, filtered, one page at a time, with export.
// The filters live in the URL query string (the API's own parameter names), so a filtered view
// can be bookmarked, shared and reloaded. Event text only ever goes through textContent.

import { apiUrl, getJSON } from "./api.js";
import { addMessages, formatDateTime, formatNumber, onLanguageChange, t } from "./i18n.js";
import { initShell } from "./shell.js";

const TYPES = ["accident", "traffic_jam", "zone_enter", "zone_exit", "hazard"];
const STATUSES = ["active", "cleared", "instant"];
const PAGE_SIZES = [10, 25, 50, 100, 250];
const DEFAULT_PAGE_SIZE = 50;
// The API's largest page (docs/contract/rest-api.md §5): an export holds at most this many of the
// filtered events.
const EXPORT_LIMIT = 1000;
const STATIONS_SHOWN = 3;
// The event details that have a translated label.
const KNOWN_DETAILS = [
  "mean_speed_kmh",
  "vehicle_count",
  "extent",
  "reason",
  "clear_reason",
  "sub_cause_code",
  "cause_name",
  "reporter_count",
  "merged_into",
];
// Rows show minutes; the details dialog shows seconds.
const ROW_TIME_FORMAT = { dateStyle: "medium", timeStyle: "short" };

addMessages({
  en: {
    "history.title": "Event history",
    "history.filters": "Filters",
    "history.type": "Type",
    "history.status": "Status",
    "history.any": "Any",
    "history.since": "Started from",
    "history.until": "Started before",
    "history.zone": "Zone",
    "history.any_zone": "Any zone",
    "history.station": "Station",
    "history.bbox": "Area (min lon, min lat, max lon, max lat)",
    "history.bbox_hint": "Optional, in degrees.",
    "history.page_size": "Rows per page",
    "history.apply": "Apply filters",
    "history.clear": "Clear",
    "history.results": "Events",
    "history.export": "Export these events (up to 1,000):",
    "history.export_csv": "Download the filtered events as CSV",
    "history.export_geojson": "Download the filtered events as GeoJSON",
    "history.caption": "Past events, newest first. Choose a row to see its details.",
    "history.col_started": "Started",
    "history.col_type": "Type",
    "history.col_status": "Status",
    "history.col_where": "Where",
    "history.col_stations": "Stations",
    "history.col_ended": "Ended",
    "history.pages": "Result pages",
    "history.previous": "Previous",
    "history.next": "Next",
    "history.page": "Page {page}",
    "history.loading": "Loading events…",
    "history.shown": {
      one: "Page {page}: {count} event.",
      other: "Page {page}: {count} events.",
    },
    "history.shown_more": {
      one: "Page {page}: {count} event; more on the next page.",
      other: "Page {page}: {count} events; more on the next page.",
    },
    "history.empty": "No event matches these filters.",
    "history.error": "The events could not be loaded: {message}",
    "history.retry": "Retry",
    "history.more_stations": "+{count} more",
    "history.open": "Details of the {type} event started {time}",
    "history.details": "Event details",
    "history.close": "Close",
    "history.as_json": "This event as JSON",
    "history.field.id": "Identifier",
    "history.field.type": "Type",
    "history.field.status": "Status",
    "history.field.version": "Version",
    "history.field.started": "Started",
    "history.field.updated": "Updated",
    "history.field.ended": "Ended",
    "history.field.position": "Position (lat, lon)",
    "history.field.cause": "Cause code",
    "history.field.stations": "Stations",
    "history.field.zone": "Zone",
    "history.detail.mean_speed_kmh": "Mean speed",
    "history.detail.vehicle_count": "Vehicles",
    "history.detail.extent": "Extent",
    "history.detail.reason": "Reason",
    "history.detail.clear_reason": "Cleared because",
    "history.detail.sub_cause_code": "Sub-cause code",
    "history.detail.cause_name": "Cause",
    "history.detail.reporter_count": "Reporting stations",
    "history.detail.merged_into": "Merged into",
    "history.geometry": "{kind} of {count} points",
    "history.still_active": "Still going on",
  },
  fr: {
    "history.title": "Historique des événements",
    "history.filters": "Filtres",
    "history.type": "Type",
    "history.status": "État",
    "history.any": "Tous",
    "history.since": "Commencé à partir du",
    "history.until": "Commencé avant le",
    "history.zone": "Zone",
    "history.any_zone": "Toutes les zones",
    "history.station": "Station",
    "history.bbox": "Secteur (lon min, lat min, lon max, lat max)",
    "history.bbox_hint": "Facultatif, en degrés.",
    "history.page_size": "Lignes par page",
    "history.apply": "Appliquer les filtres",
    "history.clear": "Effacer",
    "history.results": "Événements",
    "history.export": "Exporter ces événements (1 000 au plus) :",
    "history.export_csv": "Télécharger les événements filtrés en CSV",
    "history.export_geojson": "Télécharger les événements filtrés en GeoJSON",
    "history.caption":
      "Événements passés, du plus récent au plus ancien. Choisissez une ligne pour voir le détail.",
    "history.col_started": "Début",
    "history.col_type": "Type",
    "history.col_status": "État",
    "history.col_where": "Lieu",
    "history.col_stations": "Stations",
    "history.col_ended": "Fin",
    "history.pages": "Pages de résultats",
    "history.previous": "Précédente",
    "history.next": "Suivante",
    "history.page": "Page {page}",
    "history.loading": "Chargement des événements…",
    "history.shown": {
      one: "Page {page} : {count} événement.",
      other: "Page {page} : {count} événements.",
    },
    "history.shown_more": {
      one: "Page {page} : {count} événement ; d’autres à la page suivante.",
      other: "Page {page} : {count} événements ; d’autres à la page suivante.",
    },
    "history.empty": "Aucun événement ne correspond à ces filtres.",
    "history.error": "Les événements n’ont pas pu être chargés : {message}",
    "history.retry": "Réessayer",
    "history.more_stations": "+{count} autres",
    "history.open": "Détail de l’événement {type} commencé le {time}",
    "history.details": "Détail de l’événement",
    "history.close": "Fermer",
    "history.as_json": "Cet événement en JSON",
    "history.field.id": "Identifiant",
    "history.field.type": "Type",
    "history.field.status": "État",
    "history.field.version": "Version",
    "history.field.started": "Début",
    "history.field.updated": "Mise à jour",
    "history.field.ended": "Fin",
    "history.field.position": "Position (lat, lon)",
    "history.field.cause": "Code de cause",
    "history.field.stations": "Stations",
    "history.field.zone": "Zone",
    "history.detail.mean_speed_kmh": "Vitesse moyenne",
    "history.detail.vehicle_count": "Véhicules",
    "history.detail.extent": "Étendue",
    "history.detail.reason": "Raison",
    "history.detail.clear_reason": "Terminé pour la raison",
    "history.detail.sub_cause_code": "Code de sous-cause",
    "history.detail.cause_name": "Cause",
    "history.detail.reporter_count": "Stations ayant signalé",
    "history.detail.merged_into": "Fusionné dans",
    "history.geometry": "{kind} de {count} points",
    "history.still_active": "En cours",
  },
});

const byId = (id) => document.getElementById(id);
const form = byId("filters");
const rows = byId("event-rows");
const table = byId("events");
const statusLine = byId("results-status");
const retryButton = byId("results-retry");
const previousButton = byId("page-prev");
const nextButton = byId("page-next");
const pageNumber = byId("page-number");
const dialog = byId("event-dialog");

// Pagination: the cursor of the page shown and the cursors of the pages before it.
let filters = emptyFilters();
let cursor = null;
let previousCursors = [];
let nextCursor = null;
let items = [];
let loadState = "loading"; // loading | ready | error
let lastError = "";
let requestSerial = 0;
let dialogOpener = null;
let dialogEvent = null;

function emptyFilters() {
  return {
    types: [],
    status: "",
    since: "",
    until: "",
    zone: "",
    station: "",
    bbox: "",
    limit: DEFAULT_PAGE_SIZE,
  };
}

// --- Filters <-> URL query string <-> form ----------------------------------------------------

function validTime(text) {
  return text && !Number.isNaN(new Date(text).getTime()) ? text : "";
}

/** Read filters from a query string, dropping anything the page does not offer. */
function filtersFromQuery(search) {
  const query = new URLSearchParams(search);
  const limit = Number(query.get("limit"));
  const types = query.getAll("type").filter((type) => TYPES.includes(type));
  return {
    types: [...new Set(types)],
    status: STATUSES.includes(query.get("status")) ? query.get("status") : "",
    since: validTime(query.get("since")),
    until: validTime(query.get("until")),
    zone: (query.get("zone") || "").slice(0, 64),
    station: (query.get("station") || "").trim().slice(0, 64),
    bbox: (query.get("bbox") || "").trim().slice(0, 200),
    limit: PAGE_SIZES.includes(limit) ? limit : DEFAULT_PAGE_SIZE,
  };
}

/** The API parameters of these filters (also the page's own query string). */
function filterParams(current) {
  return {
    type: current.types,
    status: current.status,
    since: current.since,
    until: current.until,
    zone: current.zone,
    station: current.station,
    bbox: current.bbox,
  };
}

function pageQuery(current) {
  const params = filterParams(current);
  if (current.limit !== DEFAULT_PAGE_SIZE) params.limit = current.limit;
  return apiUrl(window.location.pathname, params).slice(window.location.pathname.length);
}

/** A datetime-local value (local wall time) as RFC 3339 UTC, to the second. */
function localInputToRfc3339(value) {
  if (!value) return "";
  const date = new Date(value); // no offset in the text: read as local time
  if (Number.isNaN(date.getTime())) return "";
  return date.toISOString().replace(/\.\d{3}Z$/, "Z");
}

/** An RFC 3339 time as a datetime-local value in the browser's time zone. */
function rfc3339ToLocalInput(text) {
  const date = new Date(text);
  if (!text || Number.isNaN(date.getTime())) return "";
  const pad = (n) => String(n).padStart(2, "0");
  const base =
    `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())}` +
    `T${pad(date.getHours())}:${pad(date.getMinutes())}`;
  return date.getSeconds() ? `${base}:${pad(date.getSeconds())}` : base;
}

function filtersFromForm() {
  const data = new FormData(form);
  const limit = Number(data.get("limit"));
  return {
    types: data.getAll("type").filter((type) => TYPES.includes(type)),
    status: String(data.get("status") || ""),
    since: localInputToRfc3339(String(data.get("since") || "")),
    until: localInputToRfc3339(String(data.get("until") || "")),
    zone: String(data.get("zone") || ""),
    station: String(data.get("station") || "").trim(),
    bbox: String(data.get("bbox") || "").replace(/\s+/g, ""),
    limit: PAGE_SIZES.includes(limit) ? limit : DEFAULT_PAGE_SIZE,
  };
}

function ensureZoneOption(zoneId) {
  const select = form.elements.zone;
  if (!zoneId || [...select.options].some((option) => option.value === zoneId)) return;
  // A bookmarked zone that no longer exists (or not loaded yet) still shows what is filtered.
  const option = document.createElement("option");
  option.value = zoneId;
  option.textContent = zoneId;
  select.append(option);
}

function showFiltersInForm(current) {
  for (const box of form.querySelectorAll("input[name='type']")) {
    box.checked = current.types.includes(box.value);
  }
  form.elements.status.value = current.status;
  form.elements.since.value = rfc3339ToLocalInput(current.since);
  form.elements.until.value = rfc3339ToLocalInput(current.until);
  ensureZoneOption(current.zone);
  form.elements.zone.value = current.zone;
  form.elements.station.value = current.station;
  form.elements.bbox.value = current.bbox;
  form.elements.limit.value = String(current.limit);
}

async function loadZones() {
  try {
    const collection = await getJSON("/api/zones");
    const select = form.elements.zone;
    const chosen = select.value;
    const features = [...(collection.features || [])].sort((a, b) =>
      String(a.properties.name).localeCompare(String(b.properties.name)),
    );
    for (const option of [...select.options]) if (option.value) option.remove();
    for (const feature of features) {
      const option = document.createElement("option");
      option.value = feature.properties.id;
      option.textContent = feature.properties.name; // text, never markup
      select.append(option);
    }
    ensureZoneOption(chosen);
    select.value = chosen;
  } catch (err) {
    // The zone filter still works with the zone from the URL; the events are what matters.
    console.warn("zones unavailable for the filter", err);
  }
}

// --- Loading and rendering --------------------------------------------------------------------

function updateExportLinks() {
  const params = { ...filterParams(filters), limit: EXPORT_LIMIT };
  const csv = byId("export-csv");
  const geojson = byId("export-geojson");
  csv.href = apiUrl("/api/events", { ...params, format: "csv" });
  geojson.href = apiUrl("/api/events", { ...params, format: "geojson" });
  csv.title = t("history.export_csv");
  geojson.title = t("history.export_geojson");
}

async function loadPage() {
  const serial = ++requestSerial;
  loadState = "loading";
  table.setAttribute("aria-busy", "true");
  renderStatus();
  try {
    const page = await getJSON("/api/events", {
      ...filterParams(filters),
      limit: filters.limit,
      cursor,
    });
    if (serial !== requestSerial) return; // a newer request has been made meanwhile
    items = Array.isArray(page.items) ? page.items : [];
    nextCursor = page.next_cursor || null;
    loadState = "ready";
  } catch (err) {
    if (serial !== requestSerial) return;
    items = [];
    nextCursor = null;
    loadState = "error";
    lastError = err.message;
  }
  table.setAttribute("aria-busy", "false");
  renderRows();
  renderStatus();
  renderPager();
}

function renderStatus() {
  const page = previousCursors.length + 1;
  statusLine.dataset.state = loadState;
  retryButton.hidden = loadState !== "error";
  if (loadState === "loading") {
    statusLine.textContent = t("history.loading");
  } else if (loadState === "error") {
    statusLine.textContent = t("history.error", { message: lastError });
  } else if (items.length === 0) {
    statusLine.textContent = t("history.empty");
  } else {
    const key = nextCursor ? "history.shown_more" : "history.shown";
    statusLine.textContent = t(key, { page, count: items.length });
  }
}

function renderPager() {
  // Buttons stay enabled while a page loads (clicks then wait), so keyboard focus stays on them.
  previousButton.disabled = previousCursors.length === 0;
  nextButton.disabled = !nextCursor;
  pageNumber.textContent = t("history.page", { page: previousCursors.length + 1 });
}

function cell(text, className) {
  const td = document.createElement("td");
  td.textContent = text;
  if (className) td.className = className;
  return td;
}

function typeLabel(type) {
  return TYPES.includes(type) ? t(`type.${type}`) : String(type);
}

function statusLabel(status) {
  return STATUSES.includes(status) ? t(`status.${status}`) : String(status);
}

function place(event) {
  if (event.zone_name) return event.zone_name;
  if (typeof event.lat === "number" && typeof event.lon === "number") {
    return `${event.lat.toFixed(4)}, ${event.lon.toFixed(4)}`;
  }
  return "—";
}

function stationsSummary(stations) {
  const list = Array.isArray(stations) ? stations : [];
  const shown = list.slice(0, STATIONS_SHOWN).join(", ");
  const more = list.length - STATIONS_SHOWN;
  return more > 0 ? `${shown} ${t("history.more_stations", { count: more })}` : shown || "—";
}

function renderRows() {
  const fragment = document.createDocumentFragment();
  for (const event of items) {
    const row = document.createElement("tr");
    row.dataset.eventId = event.id;
    row.dataset.type = event.type;
    row.dataset.status = event.status;
    row.className = "event-row";

    const started = document.createElement("td");
    const open = document.createElement("button");
    open.type = "button";
    open.className = "row-open";
    open.textContent = formatDateTime(event.started_at, ROW_TIME_FORMAT);
    open.setAttribute(
      "aria-label",
      t("history.open", { type: typeLabel(event.type), time: formatDateTime(event.started_at) }),
    );
    started.append(open);

    const type = cell(typeLabel(event.type), `type type-${event.type}`);
    const status = document.createElement("td");
    const badge = document.createElement("span");
    badge.className = `status status-${event.status}`;
    badge.textContent = statusLabel(event.status);
    status.append(badge);
    row.append(
      started,
      type,
      status,
      cell(place(event)),
      cell(stationsSummary(event.station_ids), "stations"),
      cell(event.ended_at ? formatDateTime(event.ended_at, ROW_TIME_FORMAT) : "—"),
    );
    fragment.append(row);
  }
  if (items.length === 0) {
    const row = document.createElement("tr");
    row.className = "empty-row";
    const td = cell(loadState === "loading" ? t("history.loading") : t("history.empty"));
    if (loadState === "error") td.textContent = t("history.error", { message: lastError });
    td.colSpan = 6;
    row.append(td);
    fragment.append(row);
  }
  rows.replaceChildren(fragment);
}

// --- Event details ----------------------------------------------------------------------------

function positionCount(coordinates) {
  if (!Array.isArray(coordinates)) return 0;
  if (typeof coordinates[0] === "number") return 1;
  return coordinates.reduce((total, part) => total + positionCount(part), 0);
}

function describeValue(value) {
  if (value === null || value === undefined) return "—";
  if (typeof value === "number") return formatNumber(value);
  if (typeof value === "object" && typeof value.type === "string" && value.coordinates) {
    // A GeoJSON geometry (a jam's extent): its kind and size, not thousands of numbers.
    const count = positionCount(value.coordinates);
    return t("history.geometry", { kind: value.type, count });
  }
  if (typeof value === "object") return JSON.stringify(value);
  return String(value);
}

function detailLabel(key) {
  // Details vary by type and may grow: unknown keys show as they are.
  return KNOWN_DETAILS.includes(key) ? t(`history.detail.${key}`) : key;
}

function addDetail(list, label, value) {
  const term = document.createElement("dt");
  term.textContent = label;
  const description = document.createElement("dd");
  description.textContent = value;
  list.append(term, description);
}

function renderDetails(event) {
  const list = byId("event-details");
  list.replaceChildren();
  addDetail(list, t("history.field.type"), typeLabel(event.type));
  addDetail(list, t("history.field.status"), statusLabel(event.status));
  addDetail(list, t("history.field.started"), formatDateTime(event.started_at));
  addDetail(list, t("history.field.updated"), formatDateTime(event.updated_at));
  addDetail(
    list,
    t("history.field.ended"),
    event.ended_at ? formatDateTime(event.ended_at) : t("history.still_active"),
  );
  addDetail(list, t("history.field.position"), `${event.lat}, ${event.lon}`);
  if (event.zone_id) {
    addDetail(list, t("history.field.zone"), `${event.zone_name || ""} (${event.zone_id})`.trim());
  }
  addDetail(
    list,
    t("history.field.stations"),
    (event.station_ids || []).join(", ") || "—",
  );
  if (event.cause_code !== null && event.cause_code !== undefined) {
    addDetail(list, t("history.field.cause"), String(event.cause_code));
  }
  for (const [key, value] of Object.entries(event.details || {})) {
    const text =
      key === "mean_speed_kmh" && typeof value === "number"
        ? t("units.kmh", { value: Math.round(value * 10) / 10 })
        : describeValue(value);
    addDetail(list, detailLabel(key), text);
  }
  addDetail(list, t("history.field.version"), String(event.version));
  addDetail(list, t("history.field.id"), event.id);
  byId("event-json").href = apiUrl(`/api/events/${encodeURIComponent(event.id)}`);
}

function openDetails(eventId, opener) {
  const event = items.find((item) => item.id === eventId);
  if (!event) return;
  dialogEvent = event;
  dialogOpener = opener;
  renderDetails(event);
  if (!dialog.open) dialog.showModal();
  byId("event-dialog-close").focus();
}

dialog.addEventListener("close", () => {
  dialogEvent = null;
  // Back to the row the details came from, so keyboard users keep their place.
  if (dialogOpener && dialogOpener.isConnected) dialogOpener.focus();
});
byId("event-dialog-close").addEventListener("click", () => dialog.close());
dialog.addEventListener("click", (event) => {
  if (event.target === dialog) dialog.close(); // a click on the backdrop
});

rows.addEventListener("click", (event) => {
  const row = event.target.closest("tr[data-event-id]");
  if (!row || event.target.closest("a")) return;
  openDetails(row.dataset.eventId, row.querySelector(".row-open"));
});

// --- Navigation -------------------------------------------------------------------------------

function applyFilters(next, { push }) {
  filters = next;
  cursor = null;
  previousCursors = [];
  if (push) {
    const url = window.location.pathname + pageQuery(filters);
    if (url !== window.location.pathname + window.location.search) {
      window.history.pushState(null, "", url);
    }
  }
  updateExportLinks();
  loadPage();
}

form.addEventListener("submit", (event) => {
  event.preventDefault();
  applyFilters(filtersFromForm(), { push: true });
});

byId("filters-clear").addEventListener("click", () => {
  showFiltersInForm(emptyFilters());
  applyFilters(emptyFilters(), { push: true });
});

window.addEventListener("popstate", () => {
  const next = filtersFromQuery(window.location.search);
  showFiltersInForm(next);
  applyFilters(next, { push: false });
});

function keepFocus(button) {
  // A button that becomes disabled (first or last page) loses focus: move it to the results.
  if (button.disabled && (document.activeElement === document.body || !document.activeElement)) {
    byId("results-title").focus();
  }
}

nextButton.addEventListener("click", async () => {
  if (!nextCursor || loadState === "loading") return;
  previousCursors.push(cursor);
  cursor = nextCursor;
  await loadPage();
  keepFocus(nextButton);
});

previousButton.addEventListener("click", async () => {
  if (previousCursors.length === 0 || loadState === "loading") return;
  cursor = previousCursors.pop();
  await loadPage();
  keepFocus(previousButton);
});

retryButton.addEventListener("click", () => loadPage());

onLanguageChange(() => {
  renderRows();
  renderStatus();
  renderPager();
  updateExportLinks();
  if (dialogEvent) renderDetails(dialogEvent);
});

// --- Start ------------------------------------------------------------------------------------

initShell("history");
filters = filtersFromQuery(window.location.search);
showFiltersInForm(filters);
updateExportLinks();
renderRows();
renderStatus();
loadPage();
loadZones();
