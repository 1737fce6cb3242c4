// Zones page: the zones on the map and in a table with the stations inside each one now
// (GET /api/zones/{id}/occupancy), refreshed every few seconds while the page is visible.
// Zone names and station ids only ever go through textContent.

import { getJSON } from "./api.js";
import { createBaseMap } from "./basemap.js";
import { addMessages, formatDateTime, formatTime, onLanguageChange, t } from "./i18n.js";
import { initShell } from "./shell.js";

const REFRESH_MS = 10_000;
// A table cell lists this many stations; the rest are counted.
const STATIONS_SHOWN = 8;
const HIGHLIGHT_STYLE = { color: "#0d47a1", weight: 4, dashArray: null, fillOpacity: 0.25 };

addMessages({
  en: {
    "zones.title": "Zones",
    "zones.intro":
      "The zones where vehicles entering and leaving are reported, and the vehicles inside each one now.",
    "zones.occupancy": "Who is inside now",
    "zones.caption": "Zones and the vehicles inside them. Choose a zone to show it on the map.",
    "zones.col_zone": "Zone",
    "zones.col_count": "Vehicles inside",
    "zones.col_stations": "Stations (inside since)",
    "zones.loading": "Loading the zones…",
    "zones.none": "No zone is defined.",
    "zones.summary": {
      one: "{zones} zones, {count} vehicle inside.",
      other: "{zones} zones, {count} vehicles inside.",
    },
    "zones.error": "The zones could not be loaded: {message}",
    "zones.occupancy_error": "Occupancy unavailable: {message}",
    "zones.updated": "Updated at {time}; refreshed every {seconds} s.",
    "zones.paused": "Updates paused while the page is hidden.",
    "zones.empty_zone": "Nobody inside",
    "zones.since": "{station} (since {time})",
    "zones.more": "+{count} more",
    "zones.show": "Show {name} on the map",
    "zones.count_label": {
      one: "{count} vehicle in {name}",
      other: "{count} vehicles in {name}",
    },
  },
  fr: {
    "zones.title": "Zones",
    "zones.intro":
      "Les zones où les entrées et sorties de véhicules sont signalées, et les véhicules présents dans chacune.",
    "zones.occupancy": "Qui est dedans",
    "zones.caption":
      "Les zones et les véhicules qui s’y trouvent. Choisissez une zone pour la montrer sur la carte.",
    "zones.col_zone": "Zone",
    "zones.col_count": "Véhicules présents",
    "zones.col_stations": "Stations (présentes depuis)",
    "zones.loading": "Chargement des zones…",
    "zones.none": "Aucune zone n’est définie.",
    "zones.summary": {
      one: "{zones} zones, {count} véhicule présent.",
      other: "{zones} zones, {count} véhicules présents.",
    },
    "zones.error": "Les zones n’ont pas pu être chargées : {message}",
    "zones.occupancy_error": "Occupation indisponible : {message}",
    "zones.updated": "Mis à jour à {time} ; actualisé toutes les {seconds} s.",
    "zones.paused": "Mises à jour suspendues tant que la page est masquée.",
    "zones.empty_zone": "Personne",
    "zones.since": "{station} (depuis {time})",
    "zones.more": "+{count} autres",
    "zones.show": "Montrer {name} sur la carte",
    "zones.count_label": {
      one: "{count} véhicule dans {name}",
      other: "{count} véhicules dans {name}",
    },
  },
});

const byId = (id) => document.getElementById(id);
const rowsBody = byId("zone-rows");
const table = byId("zones-table");
const statusLine = byId("zones-status");
const updatedLine = byId("zones-updated");

let base = null; // {map, zonesLayer, ...} once the map is ready
let zones = []; // GeoJSON features, sorted by name
let markersDrawnFor = ""; // the zones (as JSON) the count badges were drawn for
let occupancy = new Map(); // zone id -> {count, stations} or {error}
let selectedZone = null;
let loadState = "loading"; // loading | ready | error
let lastError = "";
let updatedAt = null;
let timer = null;
let refreshing = false;
const countMarkers = new Map(); // zone id -> Leaflet marker showing the count

function zoneName(feature) {
  const properties = feature.properties || {};
  return String(properties.name ?? properties.id ?? "");
}

// --- Data -------------------------------------------------------------------------------------

async function fetchZones() {
  const collection = await getJSON("/api/zones");
  const features = Array.isArray(collection.features) ? collection.features : [];
  zones = [...features].sort((a, b) => zoneName(a).localeCompare(zoneName(b)));
  await syncMap(JSON.stringify(features));
}

/** Redraw the map's zones and count badges when the zones changed since they were drawn. */
async function syncMap(zonesText) {
  if (!base) return;
  if (zonesText !== JSON.stringify(base.zones.features)) await base.reloadZones();
  const drawn = JSON.stringify(base.zones.features);
  if (drawn !== markersDrawnFor) {
    markersDrawnFor = drawn;
    drawCountMarkers();
    highlight();
  }
}

async function fetchOccupancy() {
  const answers = await Promise.all(
    zones.map(async (feature) => {
      const id = feature.properties.id;
      try {
        return [id, await getJSON(`/api/zones/${encodeURIComponent(id)}/occupancy`)];
      } catch (err) {
        return [id, { error: err.message }];
      }
    }),
  );
  occupancy = new Map(answers);
}

async function refresh() {
  if (refreshing) return;
  refreshing = true;
  try {
    await fetchZones();
    await fetchOccupancy();
    loadState = "ready";
    updatedAt = new Date();
  } catch (err) {
    loadState = "error";
    lastError = err.message;
  } finally {
    refreshing = false;
  }
  table.setAttribute("aria-busy", "false");
  render();
}

// --- Rendering --------------------------------------------------------------------------------

function stationsCell(answer) {
  const td = document.createElement("td");
  td.className = "zone-stations";
  if (!answer || answer.error) {
    td.textContent = answer ? t("zones.occupancy_error", { message: answer.error }) : "—";
    td.classList.add("error");
    return td;
  }
  const stations = Array.isArray(answer.stations) ? answer.stations : [];
  if (stations.length === 0) {
    td.textContent = t("zones.empty_zone");
    td.classList.add("muted");
    return td;
  }
  const list = document.createElement("ul");
  list.className = "station-list";
  for (const occupant of stations.slice(0, STATIONS_SHOWN)) {
    const item = document.createElement("li");
    item.dataset.stationId = occupant.station_id;
    item.textContent = t("zones.since", {
      station: occupant.station_id,
      time: formatDateTime(occupant.since, { dateStyle: "short", timeStyle: "short" }),
    });
    list.append(item);
  }
  td.append(list);
  if (stations.length > STATIONS_SHOWN) {
    const more = document.createElement("p");
    more.className = "muted more";
    more.textContent = t("zones.more", { count: stations.length - STATIONS_SHOWN });
    td.append(more);
  }
  return td;
}

function render() {
  const fragment = document.createDocumentFragment();
  let inside = 0;
  for (const feature of zones) {
    const id = feature.properties.id;
    const answer = occupancy.get(id);
    const count = answer && typeof answer.count === "number" ? answer.count : null;
    inside += count || 0;

    const row = document.createElement("tr");
    row.dataset.zoneId = id;
    row.classList.toggle("selected", id === selectedZone);
    const head = document.createElement("th");
    head.scope = "row";
    const button = document.createElement("button");
    button.type = "button";
    button.className = "zone-select";
    button.textContent = zoneName(feature);
    button.title = t("zones.show", { name: zoneName(feature) });
    button.setAttribute("aria-pressed", String(id === selectedZone));
    head.append(button);

    const countCell = document.createElement("td");
    countCell.className = "numeric zone-count";
    countCell.dataset.count = count === null ? "" : String(count);
    countCell.textContent = count === null ? "—" : String(count);
    row.append(head, countCell, stationsCell(answer));
    fragment.append(row);
  }
  // Keep keyboard focus on the same zone button across a refresh.
  const focused = document.activeElement && document.activeElement.closest("tr[data-zone-id]");
  const focusedZone = focused && rowsBody.contains(focused) ? focused.dataset.zoneId : null;
  rowsBody.replaceChildren(fragment);
  if (focusedZone) {
    const again = rowsBody.querySelector(`tr[data-zone-id="${CSS.escape(focusedZone)}"] button`);
    if (again) again.focus();
  }
  updateCountMarkers();

  statusLine.dataset.state = loadState;
  if (loadState === "loading") {
    statusLine.textContent = t("zones.loading");
  } else if (loadState === "error") {
    statusLine.textContent = t("zones.error", { message: lastError });
  } else if (zones.length === 0) {
    statusLine.textContent = t("zones.none");
  } else {
    statusLine.textContent = t("zones.summary", { zones: zones.length, count: inside });
  }
  renderUpdated();
}

function renderUpdated() {
  if (document.hidden) {
    updatedLine.textContent = t("zones.paused");
  } else if (updatedAt) {
    updatedLine.textContent = t("zones.updated", {
      time: formatTime(updatedAt),
      seconds: REFRESH_MS / 1000,
    });
  } else {
    updatedLine.textContent = "";
  }
}

// --- Map --------------------------------------------------------------------------------------

function zoneLayer(zoneId) {
  let found = null;
  if (!base) return null;
  base.zonesLayer.eachLayer((layer) => {
    if (layer.feature && layer.feature.properties.id === zoneId) found = layer;
  });
  return found;
}

function highlight() {
  if (!base) return;
  base.zonesLayer.eachLayer((layer) => {
    if (layer.feature && layer.feature.properties.id === selectedZone) {
      layer.setStyle(HIGHLIGHT_STYLE);
      layer.bringToFront();
    } else {
      base.zonesLayer.resetStyle(layer);
    }
  });
}

function selectZone(zoneId, { fit }) {
  selectedZone = zoneId;
  for (const row of rowsBody.querySelectorAll("tr[data-zone-id]")) {
    const chosen = row.dataset.zoneId === zoneId;
    row.classList.toggle("selected", chosen);
    row.querySelector("button").setAttribute("aria-pressed", String(chosen));
  }
  highlight();
  const layer = zoneLayer(zoneId);
  if (fit && layer && base) base.map.fitBounds(layer.getBounds(), { padding: [24, 24], maxZoom: 15 });
}

function countIcon(zoneId) {
  const label = document.createElement("span");
  label.className = "zone-count-badge";
  label.dataset.zoneId = zoneId;
  // The table says the same to assistive technologies; the badge is for the eye.
  label.setAttribute("aria-hidden", "true");
  return L.divIcon({ html: label, className: "zone-count-icon", iconSize: null });
}

function drawCountMarkers() {
  if (!base) return;
  for (const marker of countMarkers.values()) marker.remove();
  countMarkers.clear();
  base.zonesLayer.eachLayer((layer) => {
    if (!layer.feature || !layer.getBounds) return;
    const id = layer.feature.properties.id;
    const marker = L.marker(layer.getBounds().getCenter(), {
      icon: countIcon(id),
      interactive: false,
      keyboard: false,
    }).addTo(base.map);
    countMarkers.set(id, marker);
  });
  updateCountMarkers();
}

function updateCountMarkers() {
  for (const [id, marker] of countMarkers) {
    const element = marker.getElement();
    const badge = element && element.querySelector(".zone-count-badge");
    if (!badge) continue;
    const answer = occupancy.get(id);
    const count = answer && typeof answer.count === "number" ? answer.count : null;
    badge.textContent = count === null ? "?" : String(count);
    badge.classList.toggle("occupied", Boolean(count));
  }
}

async function startMap() {
  try {
    base = await createBaseMap(byId("zones-map"));
  } catch (err) {
    console.error("map unavailable", err);
    return;
  }
  base.zonesLayer.on("click", (event) => {
    const feature = event.layer && event.layer.feature;
    if (!feature) return;
    selectZone(feature.properties.id, { fit: false });
    const row = rowsBody.querySelector(`tr[data-zone-id="${CSS.escape(feature.properties.id)}"]`);
    if (row) row.scrollIntoView({ block: "nearest" });
  });
  markersDrawnFor = JSON.stringify(base.zones.features);
  drawCountMarkers();
  highlight();
}

// --- Refresh loop -----------------------------------------------------------------------------

function schedule() {
  window.clearTimeout(timer);
  timer = null;
  if (document.hidden) return; // nobody is looking: no polling
  timer = window.setTimeout(async () => {
    await refresh();
    schedule();
  }, REFRESH_MS);
}

document.addEventListener("visibilitychange", async () => {
  if (document.hidden) {
    window.clearTimeout(timer);
    timer = null;
    renderUpdated();
  } else {
    await refresh();
    schedule();
  }
});

rowsBody.addEventListener("click", (event) => {
  const button = event.target.closest("button.zone-select");
  if (!button) return;
  selectZone(button.closest("tr").dataset.zoneId, { fit: true });
});

onLanguageChange(render);

// --- Start ------------------------------------------------------------------------------------

initShell("zones");
render();
Promise.all([startMap(), refresh()]).then(schedule);
