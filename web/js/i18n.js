// Translations for every page: English and French message catalogues, the chosen language
// (persisted in localStorage), and Intl formatting of dates and numbers in that language.
//
// A message is a string with `{name}` placeholders, or a plural object such as
// `{one: "{count} event", other: "{count} events"}` chosen by Intl.PluralRules on params.count.

const STORAGE_KEY = "roadwatch.language";
const SUPPORTED = ["en", "fr"];
const FALLBACK = "en";

const catalogues = { en: {}, fr: {} };
const listeners = new Set();
let current = initialLanguage();

function normalise(lang) {
  const short = String(lang || "").slice(0, 2).toLowerCase();
  return SUPPORTED.includes(short) ? short : null;
}

function storedLanguage() {
  try {
    return normalise(window.localStorage.getItem(STORAGE_KEY));
  } catch {
    return null; // storage disabled (private mode, sandbox): fall back to the browser's choice
  }
}

function initialLanguage() {
  const stored = storedLanguage();
  if (stored) return stored;
  for (const candidate of navigator.languages || [navigator.language]) {
    const lang = normalise(candidate);
    if (lang) return lang;
  }
  return FALLBACK;
}

/** Merge message catalogues: `addMessages({en: {...}, fr: {...}})`. */
export function addMessages(messages) {
  for (const [lang, entries] of Object.entries(messages)) {
    if (!catalogues[lang]) continue;
    Object.assign(catalogues[lang], entries);
  }
}

// Building an Intl formatter costs far more than using one (the live page formats hundreds of
// times a second under heavy traffic): each is built once per language and options.
const formatters = new Map();

function formatter(Kind, options) {
  const key = `${Kind.name}|${current}|${JSON.stringify(options ?? null)}`;
  let made = formatters.get(key);
  if (!made) {
    made = new Kind(current, options);
    formatters.set(key, made);
  }
  return made;
}

function choosePlural(message, params) {
  if (typeof message === "string") return message;
  const count = Number(params && params.count);
  const category = formatter(Intl.PluralRules).select(Number.isFinite(count) ? count : 0);
  return message[category] ?? message.other ?? "";
}

/** The message `key` in the current language with `{name}` placeholders filled from params. */
export function t(key, params) {
  const message = catalogues[current][key] ?? catalogues[FALLBACK][key];
  if (message === undefined) {
    console.warn("missing translation", key);
    return key;
  }
  return choosePlural(message, params).replace(/\{(\w+)\}/g, (whole, name) => {
    if (!params || !(name in params)) return whole;
    const value = params[name];
    return typeof value === "number" ? formatNumber(value) : String(value);
  });
}

/** Whether `key` has a message (in the current language or the fallback). */
export function hasMessage(key) {
  return key in catalogues[current] || key in catalogues[FALLBACK];
}

/** The current language: "en" or "fr". */
export function language() {
  return current;
}

/** Switch language, remember it, and tell every listener (the shell re-translates the page). */
export function setLanguage(lang) {
  const chosen = normalise(lang);
  if (!chosen) throw new Error(`unsupported language: ${lang}`);
  try {
    window.localStorage.setItem(STORAGE_KEY, chosen);
  } catch {
    // Not persisted, but the switch still applies to this page.
  }
  apply(chosen);
}

function apply(lang) {
  if (lang === current) return;
  current = lang;
  document.documentElement.lang = lang;
  for (const listener of listeners) {
    try {
      listener(lang);
    } catch (err) {
      console.error("language change listener failed", err);
    }
  }
}

/** Call fn(lang) after every language change; returns a function that removes it. */
export function onLanguageChange(fn) {
  listeners.add(fn);
  return () => listeners.delete(fn);
}

/** Fill [data-i18n] text and [data-i18n-attr="attr:key;attr2:key2"] attributes under root. */
export function translatePage(root = document) {
  document.documentElement.lang = current;
  for (const node of root.querySelectorAll("[data-i18n]")) {
    node.textContent = t(node.dataset.i18n);
  }
  for (const node of root.querySelectorAll("[data-i18n-attr]")) {
    for (const pair of node.dataset.i18nAttr.split(";")) {
      const [attribute, key] = pair.split(":").map((part) => part.trim());
      if (attribute && key) node.setAttribute(attribute, t(key));
    }
  }
}

function validDate(iso) {
  if (iso === null || iso === undefined || iso === "") return null;
  const date = iso instanceof Date ? iso : new Date(iso);
  return Number.isNaN(date.getTime()) ? null : date;
}

/** A date and time (RFC 3339 string or Date) in the current language and the local time zone. */
export function formatDateTime(iso, options = { dateStyle: "medium", timeStyle: "medium" }) {
  const date = validDate(iso);
  if (!date) return iso ? String(iso) : "—";
  return formatter(Intl.DateTimeFormat, options).format(date);
}

/** The time of day only, for feeds where the date is obvious. */
export function formatTime(iso) {
  return formatDateTime(iso, { timeStyle: "medium" });
}

/** A number in the current language (French: narrow no-break space for thousands, comma). */
export function formatNumber(n, options) {
  if (typeof n !== "number" || Number.isNaN(n)) return "—";
  return formatter(Intl.NumberFormat, options).format(n);
}

document.documentElement.lang = current;

// Another tab switched language: follow it.
window.addEventListener("storage", (event) => {
  if (event.key !== STORAGE_KEY) return;
  const lang = normalise(event.newValue);
  if (lang) apply(lang);
});

addMessages({
  en: {
    "app.name": "RoadWatch",
    "app.tagline": "Connected-vehicle road events",
    "nav.label": "Pages",
    "nav.live": "Live",
    "nav.history": "History",
    "nav.stats": "Statistics",
    "nav.zones": "Zones",
    "shell.skip": "Skip to content",
    "shell.language": "Language",
    "shell.english": "English",
    "shell.french": "French",
    "shell.footer": "RoadWatch — connected-vehicle road events, live over XMPP and archived.",
    "shell.api_docs": "REST API",
    "type.accident": "Accident",
    "type.traffic_jam": "Traffic jam",
    "type.zone_enter": "Zone entry",
    "type.zone_exit": "Zone exit",
    "type.hazard": "Hazard",
    "type.zone": "Zone crossing",
    "status.active": "Active",
    "status.cleared": "Cleared",
    "status.instant": "Instant",
    "common.loading": "Loading…",
    "common.error": "Something went wrong: {message}",
    "common.retry": "Retry",
    "common.close": "Close",
    "common.none": "None",
    "common.unknown": "Unknown",
    "common.apply": "Apply",
    "common.reset": "Reset",
    "common.previous": "Previous",
    "common.next": "Next",
    "common.all": "All",
    "map.label": "Map of the road network",
    "map.zoom_in": "Zoom in",
    "map.zoom_out": "Zoom out",
    "map.close_popup": "Close these details",
    "map.zone": "Zone: {name}",
    "map.network_error": "The road network could not be loaded: {message}",
    "map.zones_error": "The zones could not be loaded: {message}",
    "road.motorway": "Motorway",
    "road.trunk": "Trunk road",
    "road.primary": "Primary road",
    "road.secondary": "Secondary road",
    "road.residential": "Residential street",
    "units.kmh": "{value} km/h",
    "cause.1": "Traffic condition",
    "cause.2": "Accident",
    "cause.3": "Roadworks",
    "cause.6": "Slippery road",
    "cause.18": "Low visibility",
    "cause.94": "Stationary vehicle",
    "cause.97": "Collision risk",
    "cause.99": "Dangerous situation",
  },
  fr: {
    "app.name": "RoadWatch",
    "app.tagline": "Événements routiers des véhicules connectés",
    "nav.label": "Pages",
    "nav.live": "En direct",
    "nav.history": "Historique",
    "nav.stats": "Statistiques",
    "nav.zones": "Zones",
    "shell.skip": "Aller au contenu",
    "shell.language": "Langue",
    "shell.english": "Anglais",
    "shell.french": "Français",
    "shell.footer":
      "RoadWatch — événements routiers des véhicules connectés, en direct par XMPP et archivés.",
    "shell.api_docs": "API REST",
    "type.accident": "Accident",
    "type.traffic_jam": "Embouteillage",
    "type.zone_enter": "Entrée de zone",
    "type.zone_exit": "Sortie de zone",
    "type.hazard": "Danger",
    "type.zone": "Passage de zone",
    "status.active": "En cours",
    "status.cleared": "Terminé",
    "status.instant": "Ponctuel",
    "common.loading": "Chargement…",
    "common.error": "Une erreur est survenue : {message}",
    "common.retry": "Réessayer",
    "common.close": "Fermer",
    "common.none": "Aucun",
    "common.unknown": "Inconnu",
    "common.apply": "Appliquer",
    "common.reset": "Réinitialiser",
    "common.previous": "Précédent",
    "common.next": "Suivant",
    "common.all": "Tous",
    "map.label": "Carte du réseau routier",
    "map.zoom_in": "Zoomer",
    "map.zoom_out": "Dézoomer",
    "map.close_popup": "Fermer ces détails",
    "map.zone": "Zone : {name}",
    "map.network_error": "Le réseau routier n’a pas pu être chargé : {message}",
    "map.zones_error": "Les zones n’ont pas pu être chargées : {message}",
    "road.motorway": "Autoroute",
    "road.trunk": "Voie express",
    "road.primary": "Route principale",
    "road.secondary": "Route secondaire",
    "road.residential": "Rue résidentielle",
    "units.kmh": "{value} km/h",
    "cause.1": "Conditions de circulation",
    "cause.2": "Accident",
    "cause.3": "Travaux",
    "cause.6": "Chaussée glissante",
    "cause.18": "Visibilité réduite",
    "cause.94": "Véhicule arrêté",
    "cause.97": "Risque de collision",
    "cause.99": "Situation dangereuse",
  },
});
