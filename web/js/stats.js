// Statistics page: events over time, per type and status, and hotspots, over a chosen period
// (GET /api/stats/timeseries, /api/stats/summary, /api/stats/hotspots). Every chart has a text
// summary and a table beside it for screen readers; the period is kept in the URL.

import { getJSON } from "./api.js";
import { createBaseMap, textNode } from "./basemap.js";
import {
  addMessages,
  formatDateTime,
  formatNumber,
  language,
  onLanguageChange,
  t,
} from "./i18n.js";
import { initShell } from "./shell.js";

const TYPES = ["accident", "traffic_jam", "zone_enter", "zone_exit", "hazard"];
const STATUSES = ["active", "cleared", "instant"];
const HOUR_MS = 3_600_000;
const RANGES = { "24h": 24 * HOUR_MS, "7d": 7 * 24 * HOUR_MS, "30d": 30 * 24 * HOUR_MS };
const DEFAULT_RANGE = "24h";
// The bucket that reads best for each period; the visitor may choose the other one.
const DEFAULT_BUCKET = { "24h": "hour", "7d": "day", "30d": "day" };
const HOTSPOTS_LISTED = 20;
const HOTSPOTS_DRAWN = 200;
// CSS variables of style.css: the colour of each event type and status.
const TYPE_COLOUR_VARS = {
  accident: "--accident",
  traffic_jam: "--jam",
  zone_enter: "--zone",
  zone_exit: "--zone-ink",
  hazard: "--hazard",
};
const STATUS_COLOUR_VARS = { active: "--danger", cleared: "--muted", instant: "--zone" };

addMessages({
  en: {
    "stats.title": "Statistics",
    "stats.controls": "Period",
    "stats.range": "Period",
    "stats.range_24h": "Last 24 hours",
    "stats.range_7d": "Last 7 days",
    "stats.range_30d": "Last 30 days",
    "stats.bucket": "Events counted per",
    "stats.bucket_hour": "Hour",
    "stats.bucket_day": "Day",
    "stats.loading": "Loading the statistics…",
    "stats.loaded": "Statistics from {since} to {until}.",
    "stats.error": "The statistics could not be loaded: {message}",
    "stats.timeseries": "Events over time",
    // Table captions differ from the section headings: each names a landmark of its own.
    "stats.timeseries_caption": "Events over time, in figures",
    "stats.show_table": "Show the data as a table",
    "stats.col_time": "Period starting",
    "stats.col_type": "Type",
    "stats.total": "Total",
    "stats.timeseries_text": {
      one: "{count} event in this period; the busiest {bucket} started {peak} with {peakCount}.",
      other:
        "{count} events in this period; the busiest {bucket} started {peak} with {peakCount}.",
    },
    "stats.timeseries_empty": "No event in this period.",
    "stats.unit_hour": "hour",
    "stats.unit_day": "day",
    "stats.summary": "Events per type and status",
    "stats.summary_caption": "Events per type and status, in figures",
    "stats.summary_table": "Counts",
    "stats.summary_text": "{total} events: {parts}.",
    "stats.summary_empty": "No event in this period.",
    "stats.hotspots": "Hotspots",
    "stats.hotspots_intro":
      "Where events concentrate: each square is an area of about 500 m, darker with more events.",
    "stats.hotspot_type": "Event type",
    "stats.all_types": "All types",
    "stats.ranking": "Busiest areas",
    "stats.no_hotspot": "No event in this period.",
    "stats.hotspot_count": { one: "{count} event", other: "{count} events" },
    "stats.hotspot_where": "around {lat}, {lon}",
    "stats.hotspot_show": "Show on the map",
    "stats.hotspot_more": "…and {count} more areas on the map.",
  },
  fr: {
    "stats.title": "Statistiques",
    "stats.controls": "Période",
    "stats.range": "Période",
    "stats.range_24h": "Dernières 24 heures",
    "stats.range_7d": "7 derniers jours",
    "stats.range_30d": "30 derniers jours",
    "stats.bucket": "Événements comptés par",
    "stats.bucket_hour": "Heure",
    "stats.bucket_day": "Jour",
    "stats.loading": "Chargement des statistiques…",
    "stats.loaded": "Statistiques du {since} au {until}.",
    "stats.error": "Les statistiques n’ont pas pu être chargées : {message}",
    "stats.timeseries": "Événements dans le temps",
    "stats.timeseries_caption": "Événements dans le temps, en chiffres",
    "stats.show_table": "Afficher les données sous forme de tableau",
    "stats.col_time": "Période commençant",
    "stats.col_type": "Type",
    "stats.total": "Total",
    "stats.timeseries_text": {
      one: "{count} événement sur la période ; le plus chargé : {bucket} du {peak}, {peakCount}.",
      other:
        "{count} événements sur la période ; le plus chargé : {bucket} du {peak}, {peakCount}.",
    },
    "stats.timeseries_empty": "Aucun événement sur cette période.",
    "stats.unit_hour": "l’heure",
    "stats.unit_day": "le jour",
    "stats.summary": "Événements par type et par état",
    "stats.summary_caption": "Événements par type et par état, en chiffres",
    "stats.summary_table": "Décompte",
    "stats.summary_text": "{total} événements : {parts}.",
    "stats.summary_empty": "Aucun événement sur cette période.",
    "stats.hotspots": "Points chauds",
    "stats.hotspots_intro":
      "Là où les événements se concentrent : chaque carré est un secteur d’environ 500 m, plus foncé s’il y a plus d’événements.",
    "stats.hotspot_type": "Type d’événement",
    "stats.all_types": "Tous les types",
    "stats.ranking": "Secteurs les plus chargés",
    "stats.no_hotspot": "Aucun événement sur cette période.",
    "stats.hotspot_count": { one: "{count} événement", other: "{count} événements" },
    "stats.hotspot_where": "vers {lat}, {lon}",
    "stats.hotspot_show": "Montrer sur la carte",
    "stats.hotspot_more": "…et {count} autres secteurs sur la carte.",
  },
});

const byId = (id) => document.getElementById(id);
const rangeSelect = byId("stats-range");
const bucketSelect = byId("stats-bucket");
const hotspotSelect = byId("hotspot-type");
const statusLine = byId("stats-status");

const charts = { timeseries: null, summary: null };
let view = { range: DEFAULT_RANGE, bucket: DEFAULT_BUCKET[DEFAULT_RANGE], hotspot: "" };
let period = null; // {since, until} of the figures shown
let series = null; // {bucket, labels: [iso], counts: {type: [n]}}
let summary = null; // {type: {status: n}}
let hotspots = []; // [{lat, lon, count, polygon?}]
let loadState = "loading";
let lastError = "";
let serial = 0;
let hotspotSerial = 0;
let mapReady = null; // Promise of the base map
let hotspotLayer = null;

// --- Period and URL ---------------------------------------------------------------------------

function viewFromQuery(search) {
  const query = new URLSearchParams(search);
  const range = query.get("range") in RANGES ? query.get("range") : DEFAULT_RANGE;
  const bucket = ["hour", "day"].includes(query.get("bucket"))
    ? query.get("bucket")
    : DEFAULT_BUCKET[range];
  const hotspot = TYPES.includes(query.get("hotspot")) ? query.get("hotspot") : "";
  return { range, bucket, hotspot };
}

function storeViewInUrl() {
  const query = new URLSearchParams();
  if (view.range !== DEFAULT_RANGE) query.set("range", view.range);
  if (view.bucket !== DEFAULT_BUCKET[view.range]) query.set("bucket", view.bucket);
  if (view.hotspot) query.set("hotspot", view.hotspot);
  const text = query.toString();
  window.history.replaceState(null, "", window.location.pathname + (text ? `?${text}` : ""));
}

function rfc3339(ms) {
  return new Date(ms).toISOString().replace(/\.\d{3}Z$/, "Z");
}

/** The period ending now. */
function currentPeriod() {
  const until = Date.now();
  const since = until - RANGES[view.range];
  return { since: rfc3339(since), until: rfc3339(until) };
}

// --- Reading the API's answers ----------------------------------------------------------------

function emptySummary() {
  return Object.fromEntries(TYPES.map((type) => [type, { active: 0, cleared: 0, instant: 0 }]));
}

/** Counts per type and status: `by_type_and_status` of GET /api/stats/summary. */
function readSummary(answer) {
  const table = emptySummary();
  for (const [type, statuses] of Object.entries(answer.by_type_and_status || {})) {
    if (!table[type]) continue;
    for (const status of STATUSES) table[type][status] = Number(statuses[status]) || 0;
  }
  return table;
}

/** Bucket starts and per-type counts: `buckets` of GET /api/stats/timeseries, oldest first. */
function readSeries(answer) {
  const buckets = Array.isArray(answer.buckets) ? answer.buckets : [];
  return {
    bucket: answer.bucket || view.bucket,
    labels: buckets.map((bucket) => bucket.start),
    counts: Object.fromEntries(
      TYPES.map((type) => [type, buckets.map((bucket) => Number(bucket.counts[type]) || 0)]),
    ),
  };
}

/** Grid squares, busiest first: `cells` of GET /api/stats/hotspots. */
function readHotspots(answer) {
  const cells = Array.isArray(answer.cells) ? answer.cells : [];
  return cells
    .map((cell) => ({
      id: String(cell.id),
      lat: Number(cell.lat),
      lon: Number(cell.lon),
      count: Number(cell.count) || 0,
      polygon: cell.polygon || null,
    }))
    .filter((cell) => Number.isFinite(cell.lat) && Number.isFinite(cell.lon) && cell.count > 0)
    .sort((a, b) => b.count - a.count);
}

// --- Loading ----------------------------------------------------------------------------------

async function loadAll() {
  const mine = ++serial;
  period = currentPeriod();
  loadState = "loading";
  renderStatus();
  try {
    const [seriesAnswer, summaryAnswer] = await Promise.all([
      getJSON("/api/stats/timeseries", { bucket: view.bucket, ...period }),
      getJSON("/api/stats/summary", period),
    ]);
    if (mine !== serial) return;
    series = readSeries(seriesAnswer);
    summary = readSummary(summaryAnswer);
    loadState = "ready";
  } catch (err) {
    if (mine !== serial) return;
    loadState = "error";
    lastError = err.message;
  }
  renderStatus();
  renderSeries();
  renderSummary();
  await loadHotspots();
}

async function loadHotspots() {
  const mine = ++hotspotSerial;
  try {
    const answer = await getJSON("/api/stats/hotspots", {
      type: view.hotspot,
      limit: HOTSPOTS_DRAWN,
      ...(period || currentPeriod()),
    });
    if (mine !== hotspotSerial) return;
    hotspots = readHotspots(answer);
  } catch (err) {
    if (mine !== hotspotSerial) return;
    hotspots = [];
    loadState = "error";
    lastError = err.message;
    renderStatus();
  }
  renderHotspotList();
  await drawHotspots();
}

function renderStatus() {
  statusLine.dataset.state = loadState;
  // The exact period of the figures, for anyone comparing them with the API.
  statusLine.dataset.since = period ? period.since : "";
  statusLine.dataset.until = period ? period.until : "";
  if (loadState === "loading") statusLine.textContent = t("stats.loading");
  else if (loadState === "error") statusLine.textContent = t("stats.error", { message: lastError });
  else {
    statusLine.textContent = t("stats.loaded", {
      since: formatDateTime(period.since, { dateStyle: "medium", timeStyle: "short" }),
      until: formatDateTime(period.until, { dateStyle: "medium", timeStyle: "short" }),
    });
  }
}

// --- Charts -----------------------------------------------------------------------------------

function cssColour(variable) {
  return getComputedStyle(document.documentElement).getPropertyValue(variable).trim() || "#555";
}

function bucketLabel(iso, bucket) {
  const options =
    bucket === "day"
      ? { dateStyle: "medium" }
      : view.range === "24h"
        ? { timeStyle: "short" }
        : { dateStyle: "short", timeStyle: "short" };
  return formatDateTime(iso, options);
}

function makeChart(canvas, config) {
  const reduceMotion = window.matchMedia("(prefers-reduced-motion: reduce)").matches;
  config.options = {
    responsive: true,
    maintainAspectRatio: false,
    animation: reduceMotion ? false : { duration: 300 },
    locale: language(),
    ...config.options,
  };
  return new Chart(canvas, config);
}

function renderSeries() {
  const canvas = byId("timeseries-chart");
  const text = byId("timeseries-text");
  const head = byId("timeseries-table").tHead;
  const body = byId("timeseries-table").tBodies[0];
  if (!series) {
    text.textContent = loadState === "error" ? "" : t("stats.loading");
    return;
  }
  const bucket = series.bucket;
  const labels = series.labels.map((iso) => bucketLabel(iso, bucket));
  const shownTypes = TYPES.filter((type) => series.counts[type].some((n) => n > 0));
  const datasets = (shownTypes.length ? shownTypes : TYPES).map((type) => ({
    label: t(`type.${type}`),
    data: series.counts[type],
    backgroundColor: cssColour(TYPE_COLOUR_VARS[type]),
    borderColor: cssColour(TYPE_COLOUR_VARS[type]),
    stack: "events",
  }));
  if (charts.timeseries) charts.timeseries.destroy();
  charts.timeseries = makeChart(canvas, {
    type: "bar",
    data: { labels, datasets },
    options: {
      scales: {
        x: { stacked: true },
        y: { stacked: true, beginAtZero: true, ticks: { precision: 0 } },
      },
      plugins: { legend: { position: "bottom" } },
    },
  });

  // The same figures as text and as a table.
  const totals = series.labels.map((_, i) => TYPES.reduce((sum, ty) => sum + series.counts[ty][i], 0));
  const total = totals.reduce((sum, n) => sum + n, 0);
  if (total === 0) {
    text.textContent = t("stats.timeseries_empty");
  } else {
    const peakIndex = totals.indexOf(Math.max(...totals));
    text.textContent = t("stats.timeseries_text", {
      count: total,
      bucket: t(`stats.unit_${bucket}`),
      peak: formatDateTime(series.labels[peakIndex], { dateStyle: "medium", timeStyle: "short" }),
      peakCount: t("stats.hotspot_count", { count: totals[peakIndex] }),
    });
  }
  canvas.setAttribute("aria-label", `${t("stats.timeseries")}. ${text.textContent}`);

  const headRow = document.createElement("tr");
  for (const label of [t("stats.col_time"), ...TYPES.map((ty) => t(`type.${ty}`)), t("stats.total")]) {
    const th = document.createElement("th");
    th.scope = "col";
    th.textContent = label;
    headRow.append(th);
  }
  head.replaceChildren(headRow);
  const fragment = document.createDocumentFragment();
  series.labels.forEach((iso, i) => {
    const row = document.createElement("tr");
    const th = document.createElement("th");
    th.scope = "row";
    th.textContent = labels[i];
    row.append(th);
    for (const value of [...TYPES.map((ty) => series.counts[ty][i]), totals[i]]) {
      const td = document.createElement("td");
      td.className = "numeric";
      td.textContent = formatNumber(value);
      row.append(td);
    }
    fragment.append(row);
  });
  body.replaceChildren(fragment);
}

function renderSummary() {
  const canvas = byId("summary-chart");
  const text = byId("summary-text");
  const body = byId("summary-rows");
  const foot = byId("summary-total");
  if (!summary) {
    text.textContent = loadState === "error" ? "" : t("stats.loading");
    return;
  }
  const typeTotal = (type) => STATUSES.reduce((sum, status) => sum + summary[type][status], 0);
  const datasets = STATUSES.map((status) => ({
    label: t(`status.${status}`),
    data: TYPES.map((type) => summary[type][status]),
    backgroundColor: cssColour(STATUS_COLOUR_VARS[status]),
    stack: "statuses",
  }));
  if (charts.summary) charts.summary.destroy();
  charts.summary = makeChart(canvas, {
    type: "bar",
    data: { labels: TYPES.map((type) => t(`type.${type}`)), datasets },
    options: {
      indexAxis: "y",
      scales: {
        x: { stacked: true, beginAtZero: true, ticks: { precision: 0 } },
        y: { stacked: true },
      },
      plugins: { legend: { position: "bottom" } },
    },
  });

  const total = TYPES.reduce((sum, type) => sum + typeTotal(type), 0);
  text.textContent =
    total === 0
      ? t("stats.summary_empty")
      : t("stats.summary_text", {
          total: formatNumber(total),
          parts: TYPES.filter((type) => typeTotal(type) > 0)
            .map((type) => `${t(`type.${type}`)} ${formatNumber(typeTotal(type))}`)
            .join(", "),
        });
  canvas.setAttribute("aria-label", `${t("stats.summary")}. ${text.textContent}`);

  const row = (label, values, type) => {
    const tr = document.createElement("tr");
    if (type) tr.dataset.type = type;
    const th = document.createElement("th");
    th.scope = "row";
    th.textContent = label;
    tr.append(th);
    values.forEach((value, i) => {
      const td = document.createElement("td");
      td.className = "numeric";
      td.dataset.status = i < STATUSES.length ? STATUSES[i] : "total";
      td.dataset.count = String(value);
      td.textContent = formatNumber(value);
      tr.append(td);
    });
    return tr;
  };
  body.replaceChildren(
    ...TYPES.map((type) =>
      row(t(`type.${type}`), [...STATUSES.map((s) => summary[type][s]), typeTotal(type)], type),
    ),
  );
  const statusTotals = STATUSES.map((s) => TYPES.reduce((sum, type) => sum + summary[type][s], 0));
  foot.replaceChildren(row(t("stats.total"), [...statusTotals, total], ""));
}

// --- Hotspots ---------------------------------------------------------------------------------

function hotspotColour() {
  return cssColour(view.hotspot ? TYPE_COLOUR_VARS[view.hotspot] : "--danger");
}

function hotspotLabel(cell) {
  return `${t("stats.hotspot_count", { count: cell.count })}, ${t("stats.hotspot_where", {
    lat: cell.lat.toFixed(4),
    lon: cell.lon.toFixed(4),
  })}`;
}

function renderHotspotList() {
  const list = byId("hotspot-list");
  const empty = byId("hotspot-empty");
  empty.hidden = hotspots.length > 0;
  const items = hotspots.slice(0, HOTSPOTS_LISTED).map((cell, index) => {
    const item = document.createElement("li");
    item.dataset.count = String(cell.count);
    const button = document.createElement("button");
    button.type = "button";
    button.title = t("stats.hotspot_show");
    const count = document.createElement("span");
    count.className = "hotspot-count";
    count.textContent = t("stats.hotspot_count", { count: cell.count });
    const where = document.createElement("span");
    where.className = "hotspot-where";
    where.textContent = t("stats.hotspot_where", {
      lat: cell.lat.toFixed(4),
      lon: cell.lon.toFixed(4),
    });
    button.append(count, where);
    button.addEventListener("click", () => focusHotspot(index));
    item.append(button);
    return item;
  });
  if (hotspots.length > HOTSPOTS_LISTED) {
    const more = document.createElement("li");
    more.className = "muted";
    more.textContent = t("stats.hotspot_more", { count: hotspots.length - HOTSPOTS_LISTED });
    items.push(more);
  }
  list.replaceChildren(...items);
}

function polygonLatLngs(polygon) {
  // GeoJSON positions are [lon, lat]; Leaflet wants [lat, lon].
  if (!polygon || polygon.type !== "Polygon" || !Array.isArray(polygon.coordinates)) return null;
  return polygon.coordinates.map((ring) => ring.map(([lon, lat]) => [lat, lon]));
}

async function drawHotspots() {
  const base = await mapReady;
  if (!base) return;
  if (hotspotLayer) hotspotLayer.remove();
  hotspotLayer = L.featureGroup().addTo(base.map);
  const colour = hotspotColour();
  const most = hotspots.length ? hotspots[0].count : 1;
  hotspots.forEach((cell, index) => {
    const weight = Math.sqrt(cell.count / most); // area, not radius, follows the count
    const style = {
      color: colour,
      weight: 1.5,
      fillColor: colour,
      fillOpacity: 0.2 + 0.5 * weight,
    };
    const latLngs = polygonLatLngs(cell.polygon);
    const shape = latLngs
      ? L.polygon(latLngs, style)
      : L.circleMarker([cell.lat, cell.lon], { ...style, radius: 6 + 18 * weight });
    shape.bindTooltip(() => textNode(hotspotLabel(cell)));
    shape.hotspotIndex = index;
    hotspotLayer.addLayer(shape);
  });
}

async function focusHotspot(index) {
  const base = await mapReady;
  if (!base || !hotspotLayer) return;
  hotspotLayer.eachLayer((layer) => {
    if (layer.hotspotIndex !== index) return;
    const centre = layer.getLatLng ? layer.getLatLng() : layer.getBounds().getCenter();
    base.map.setView(centre, Math.max(base.map.getZoom(), 15));
    layer.openTooltip(centre);
  });
  byId("hotspots-map").scrollIntoView({ block: "nearest" });
}

// --- Controls ---------------------------------------------------------------------------------

function showView() {
  rangeSelect.value = view.range;
  bucketSelect.value = view.bucket;
  hotspotSelect.value = view.hotspot;
}

rangeSelect.addEventListener("change", () => {
  view = { ...view, range: rangeSelect.value, bucket: DEFAULT_BUCKET[rangeSelect.value] };
  showView();
  storeViewInUrl();
  loadAll();
});

bucketSelect.addEventListener("change", () => {
  view = { ...view, bucket: bucketSelect.value };
  storeViewInUrl();
  loadAll();
});

hotspotSelect.addEventListener("change", () => {
  view = { ...view, hotspot: hotspotSelect.value };
  storeViewInUrl();
  loadHotspots();
});

byId("stats-controls").addEventListener("submit", (event) => event.preventDefault());

onLanguageChange(() => {
  renderStatus();
  renderSeries();
  renderSummary();
  renderHotspotList();
});

// --- Start ------------------------------------------------------------------------------------

initShell("stats");
view = viewFromQuery(window.location.search);
showView();
mapReady = createBaseMap(byId("hotspots-map"), { zones: false }).catch((err) => {
  console.error("map unavailable", err);
  return null;
});
loadAll();
