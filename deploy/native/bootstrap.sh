#!/usr/bin/env bash
# Install what RoadWatch needs on a Debian/Ubuntu machine, skipping what is already there:
# Debian packages, the Python virtual environment, and the web app's npm assets.
# Usage: deploy/native/bootstrap.sh [--test]   (--test adds what the test suite needs)
set -euo pipefail

cd "$(dirname "$0")/../.."
want_test=0
[ "${1:-}" = "--test" ] && want_test=1

say() { printf '\033[1m==>\033[0m %s\n' "$*"; }

# Servers of docs/contract/README.md §1, supervisor (which runs them all under `make up`) and the
# tools the runner calls (openssl makes the local CA and the servers' certificate).
packages=(mosquitto mosquitto-clients prosody lua-dbi-mysql lua-unbound mariadb-server
          mariadb-client apache2 supervisor python3-venv openssl)
command -v npm >/dev/null 2>&1 || packages+=(npm)
# profanity: the tests log in with an XMPP client people use (tests/integration/test_tls_clients.py).
[ "$want_test" = 1 ] && packages+=(chromium profanity)

missing=()
for pkg in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "missing Debian packages: ${missing[*]} — run as root (or install them) first" >&2
    exit 1
  fi
  say "installing ${missing[*]}"
  # The packages' own services would start on our default ports; RoadWatch runs its own.
  policy=/usr/sbin/policy-rc.d
  own_policy=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod +x "$policy" && own_policy=1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  [ "$own_policy" = 1 ] && rm -f "$policy"
  # RoadWatch starts its own supervisord per run (its own config and socket under .run/); the
  # package's system-wide one, installed here, is kept from starting at boot as well.
  if printf '%s\n' "${missing[@]}" | grep -qx supervisor; then
    if command -v systemctl >/dev/null 2>&1; then
      systemctl disable supervisor >/dev/null 2>&1 || true
    fi
    update-rc.d supervisor disable >/dev/null 2>&1 || true
  fi
else
  say "Debian packages present"
fi

# Python environment, reinstalled only when pyproject.toml changes.
if [ ! -x .venv/bin/python ]; then
  say "creating the Python environment (.venv)"
  python3 -m venv .venv
fi
stamp=.venv/.roadwatch-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  say "installing RoadWatch and its Python dependencies"
  .venv/bin/pip install -q --upgrade pip >/dev/null
  .venv/bin/pip install -q -e '.[dev]'
  touch "$stamp"
else
  say "Python environment up to date"
fi

# Browser libraries come from npm and are served by Apache: no CDN (docs/contract/web.md §1).
if [ ! -d web/node_modules ] || [ web/package.json -nt web/node_modules ]; then
  say "installing web assets from npm"
  (cd web && npm install --no-audit --no-fund --loglevel=error >/dev/null)
  touch web/node_modules
fi
# Only the built files the pages load are copied to web/vendor/, which Apache serves.
mkdir -p web/vendor/leaflet web/vendor/swagger-ui
cp web/node_modules/strophe.js/dist/strophe.umd.min.js web/vendor/
cp web/node_modules/chart.js/dist/chart.umd.js web/vendor/
cp -r web/node_modules/leaflet/dist/leaflet.js web/node_modules/leaflet/dist/leaflet.css \
  web/node_modules/leaflet/dist/images web/vendor/leaflet/
cp web/node_modules/swagger-ui-dist/swagger-ui-bundle.js \
  web/node_modules/swagger-ui-dist/swagger-ui.css web/vendor/swagger-ui/
