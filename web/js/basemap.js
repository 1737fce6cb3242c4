// The base map of every page: our own road network and the zones, drawn by Leaflet with no tile
// layer (no internet needed). Names are only ever put into the map as text nodes.

import { getJSON } from "./api.js";
import { onLanguageChange, t } from "./i18n.js";

// Reims, where the bundled network lies; used only until (or if) the network loads.
const DEFAULT_CENTER = [49.2583, 4.0317];
const DEFAULT_ZOOM = 12;

const ROAD_STYLES = {
  motorway: { color: "#5f6b7a", weight: 5 },
  trunk: { color: "#6f7b8a", weight: 4 },
  primary: { color: "#8792a2", weight: 3 },
  secondary: { color: "#9ea8b5", weight: 2.5 },
  residential: { color: "#b9c1cc", weight: 1.5 },
};
const DEFAULT_ROAD_STYLE = { color: "#b9c1cc", weight: 1.5 };
const ZONE_STYLE = {
  color: "#1565c0",
  weight: 2,
  dashArray: "6 4",
  fillColor: "#1565c0",
  fillOpacity: 0.08,
};

/** A DOM node holding plain text: what Leaflet tooltips and popups receive, never HTML. */
export function textNode(text, className = "map-text") {
  const span = document.createElement("span");
  span.className = className;
  span.textContent = text;
  return span;
}

function roadTooltip(properties) {
  const box = document.createElement("span");
  box.className = "map-text";
  const name = document.createElement("strong");
  name.textContent = properties.name || properties.id || "";
  const detail = document.createElement("span");
  detail.className = "map-text-detail";
  const parts = [];
  if (properties.road_class) parts.push(t(`road.${properties.road_class}`));
  if (typeof properties.speed_limit_kmh === "number") {
    parts.push(t("units.kmh", { value: properties.speed_limit_kmh }));
  }
  detail.textContent = parts.join(" · ");
  box.append(name, document.createElement("br"), detail);
  return box;
}

function zoneTooltip(properties, zoneDetails) {
  const name = properties.name ?? properties.id ?? "";
  const label = textNode(t("map.zone", { name }), "zone-label");
  const extra = zoneDetails ? zoneDetails(properties) : "";
  if (!extra) return label;
  const box = document.createElement("span");
  box.className = "map-text";
  box.append(label, document.createElement("br"), textNode(extra, "map-text-detail"));
  return box;
}

// Leaflet names its zoom buttons in English: name them in the page's language, now and later.
function translateZoomButtons(map) {
  const container = map.zoomControl && map.zoomControl.getContainer();
  if (!container) return;
  for (const [selector, key] of [
    [".leaflet-control-zoom-in", "map.zoom_in"],
    [".leaflet-control-zoom-out", "map.zoom_out"],
  ]) {
    const button = container.querySelector(selector);
    if (!button) continue;
    button.title = t(key);
    button.setAttribute("aria-label", t(key));
  }
}

function messageControl(map) {
  const control = L.control({ position: "bottomleft" });
  let box = null;
  control.onAdd = () => {
    box = L.DomUtil.create("div", "map-message");
    box.setAttribute("role", "alert");
    return box;
  };
  control.addTo(map);
  return (text) => {
    box.textContent = text;
    box.hidden = !text;
  };
}

/**
 * Create a Leaflet map in `container` with the road network and the zones, fitted to the network.
 * Options: `zones` (default true) to draw the zones, `leaflet` (extra L.map options),
 * `zoneDetails(properties)` (a second line of plain text for a zone's tooltip).
 * Resolves to {map, roadsLayer, zonesLayer, zones, reloadZones}; `zones` is the zones'
 * GeoJSON FeatureCollection, `reloadZones()` fetches and redraws them.
 */
export async function createBaseMap(container, options = {}) {
  // Fades, zooms and pans are animated only for those who have not asked for less motion.
  const animate = !window.matchMedia("(prefers-reduced-motion: reduce)").matches;
  const map = L.map(container, {
    attributionControl: false,
    zoomSnap: 0.25,
    minZoom: 9,
    maxZoom: 18,
    fadeAnimation: animate,
    zoomAnimation: animate,
    markerZoomAnimation: animate,
    ...(options.leaflet || {}),
  }).setView(DEFAULT_CENTER, DEFAULT_ZOOM);
  if (!container.hasAttribute("aria-label")) {
    container.setAttribute("data-i18n-attr", "aria-label:map.label");
    container.setAttribute("aria-label", t("map.label"));
  }
  // Roads under zones, zones under the events drawn in the default overlay pane.
  map.createPane("roads").style.zIndex = "320";
  map.createPane("zones").style.zIndex = "340";
  const showMessage = messageControl(map);
  showMessage("");

  const roadsLayer = L.geoJSON(null, {
    pane: "roads",
    style: (feature) => ROAD_STYLES[feature.properties.road_class] || DEFAULT_ROAD_STYLE,
    onEachFeature: (feature, layer) => {
      layer.bindTooltip(() => roadTooltip(feature.properties), { sticky: true });
    },
  }).addTo(map);
  const zonesLayer = L.geoJSON(null, {
    pane: "zones",
    style: () => ZONE_STYLE,
    onEachFeature: (feature, layer) => {
      // A function, so the text is rebuilt (and translated) each time it opens.
      layer.bindTooltip(() => zoneTooltip(feature.properties, options.zoneDetails), {
        sticky: true,
      });
      layer.on("add", () => {
        const path = layer.getElement && layer.getElement();
        if (path) path.dataset.zoneId = String(feature.properties.id ?? "");
      });
    },
  });
  if (options.zones !== false) zonesLayer.addTo(map);

  const result = {
    map,
    roadsLayer,
    zonesLayer,
    zones: { type: "FeatureCollection", features: [] },
    reloadZones,
  };
  const problems = {};
  // Kept as keys and raw messages, so a language change re-translates them.
  const report = () =>
    showMessage(
      Object.values(problems)
        .map(([key, message]) => t(key, { message }))
        .join(" "),
    );

  async function loadNetwork() {
    try {
      const network = await getJSON("/api/network");
      roadsLayer.addData(network);
      const bounds = roadsLayer.getBounds();
      if (bounds.isValid()) map.fitBounds(bounds, { padding: [8, 8] });
      delete problems.network;
    } catch (err) {
      problems.network = ["map.network_error", err.message];
    }
    report();
  }

  async function reloadZones() {
    try {
      const zones = await getJSON("/api/zones");
      zonesLayer.clearLayers();
      zonesLayer.addData(zones);
      result.zones = zones;
      delete problems.zones;
    } catch (err) {
      problems.zones = ["map.zones_error", err.message];
    }
    report();
    return result.zones;
  }

  translateZoomButtons(map);
  // Likewise the close button of every popup, as it opens.
  map.on("popupopen", (event) => {
    const close = event.popup.getElement()?.querySelector(".leaflet-popup-close-button");
    if (!close) return;
    close.title = t("map.close_popup");
    close.setAttribute("aria-label", t("map.close_popup"));
  });
  await Promise.all([loadNetwork(), options.zones === false ? null : reloadZones()]);
  onLanguageChange(() => {
    report();
    translateZoomButtons(map);
  });
  return result;
}
