#!/bin/sh
# Create or update the service accounts gateway@ and collector@ (prosodyctl register
# overwrites, so this is idempotent and applies changed passwords), then run Prosody.
set -eu

config=/etc/roadwatch/prosody/prosody.cfg.lua
domain=${ROADWATCH_XMPP_DOMAIN:-roadwatch.local}

# Without its certificate Prosody would start, but no client could log in from another
# container (STARTTLS is required there): say so instead.
tls=${ROADWATCH_PROSODY_TLS_DIR:-/etc/roadwatch/tls}
if [ ! -r "$tls/server.crt" ] || [ ! -r "$tls/server.key" ]; then
  echo "no readable server.crt and server.key in $tls: run deploy/compose/prepare.sh" >&2
  exit 1
fi

register() {
  case "$2" in
    "") echo "no XMPP password for $1: set it in .env (make up generates it)" >&2; exit 1 ;;
  esac
  # The password goes through standard input (asked twice), never on a command line.
  printf '%s\n%s\n' "$2" "$2" | prosodyctl --config "$config" register "$1" "$domain" >/dev/null
}
register gateway "${ROADWATCH_XMPP_GATEWAY_PASSWORD:-}"
register collector "${ROADWATCH_XMPP_COLLECTOR_PASSWORD:-}"
unset ROADWATCH_XMPP_GATEWAY_PASSWORD ROADWATCH_XMPP_COLLECTOR_PASSWORD

exec prosody -F --config "$config"
