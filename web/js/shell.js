// The header and footer shared by every page: brand, navigation, language switch, skip link.

import { language, onLanguageChange, setLanguage, translatePage } from "./i18n.js";

const PAGES = [
  { page: "live", href: "/", key: "nav.live" },
  { page: "history", href: "/history", key: "nav.history" },
  { page: "stats", href: "/stats", key: "nav.stats" },
  { page: "zones", href: "/zones", key: "nav.zones" },
];
// Language names are written in their own language, whatever the page's language is.
const LANGUAGES = [
  { lang: "en", short: "EN", name: "English" },
  { lang: "fr", short: "FR", name: "Français" },
];

function element(tag, attributes = {}, children = []) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (name === "text") node.textContent = value;
    else node.setAttribute(name, value);
  }
  for (const child of children) node.append(child);
  return node;
}

function renderHeader(header, page) {
  const skip = element("a", { class: "skip-link", href: "#main", "data-i18n": "shell.skip" });
  const brand = element("a", { class: "brand", href: "/" }, [
    element("img", { src: "/favicon.svg", alt: "", width: "28", height: "28" }),
    element("span", { "data-i18n": "app.name" }),
  ]);
  const links = PAGES.map((entry) => {
    const link = element("a", {
      href: entry.href,
      "data-i18n": entry.key,
      "data-page": entry.page,
    });
    if (entry.page === page) link.setAttribute("aria-current", "page");
    return element("li", {}, [link]);
  });
  const nav = element("nav", { class: "site-nav", "data-i18n-attr": "aria-label:nav.label" }, [
    element("ul", {}, links),
  ]);
  const buttons = LANGUAGES.map((entry) => {
    const button = element("button", {
      type: "button",
      class: "lang-button",
      lang: entry.lang,
      "aria-label": entry.name,
      title: entry.name,
      "data-lang": entry.lang,
      text: entry.short,
    });
    button.addEventListener("click", () => setLanguage(entry.lang));
    return button;
  });
  const switcher = element(
    "div",
    { class: "lang-switch", role: "group", "data-i18n-attr": "aria-label:shell.language" },
    buttons,
  );
  header.classList.add("site-header");
  header.replaceChildren(skip, brand, nav, switcher);
}

function renderFooter(footer) {
  footer.classList.add("site-footer");
  footer.replaceChildren(
    element("p", {}, [
      element("span", { "data-i18n": "shell.footer" }),
      " · ",
      element("a", { href: "/api/docs", "data-i18n": "shell.api_docs" }),
    ]),
  );
}

function markLanguage() {
  for (const button of document.querySelectorAll(".lang-button")) {
    button.setAttribute("aria-pressed", String(button.dataset.lang === language()));
  }
}

function setScrollableBox(box, scrollable) {
  const caption = box.querySelector("caption");
  if (scrollable && caption) {
    const table = caption.closest("table");
    if (!caption.id) caption.id = `${table.id || "table"}-caption`;
    box.setAttribute("tabindex", "0");
    box.setAttribute("role", "region");
    box.setAttribute("aria-labelledby", caption.id);
  } else {
    box.removeAttribute("tabindex");
    box.removeAttribute("role");
    box.removeAttribute("aria-labelledby");
  }
}

// A table wider than its box (a phone, a long translation) scrolls sideways. Keyboard users can
// scroll it only once the box takes the focus, so an overflowing box becomes a focusable region
// named by its table's caption, and goes back to a plain box when everything fits again.
function keepWideTablesScrollable() {
  const observer = new ResizeObserver((entries) => {
    for (const entry of entries) {
      const box = entry.target.closest(".table-scroll");
      if (box) setScrollableBox(box, box.scrollWidth > box.clientWidth + 1);
    }
  });
  for (const box of document.querySelectorAll(".table-scroll")) {
    observer.observe(box);
    const table = box.querySelector("table");
    if (table) observer.observe(table);
  }
}

/** Render the common header and footer for `page` ("live", "history", "stats", "zones"). */
export function initShell(page) {
  const header = document.getElementById("site-header");
  const footer = document.getElementById("site-footer");
  if (header) renderHeader(header, page);
  if (footer) renderFooter(footer);
  translatePage();
  markLanguage();
  keepWideTablesScrollable();
  onLanguageChange(() => {
    translatePage();
    markLanguage();
  });
}
