#!/bin/sh
# The container's XMPP accounts for people who follow the alerts (docs/contract/xmpp.md §2):
#   docker-compose exec prosody roadwatch-xmpp-account add|rotate NAME   prints a new password once
#   docker-compose exec prosody roadwatch-xmpp-account remove NAME
set -eu

config=/etc/roadwatch/prosody/prosody.cfg.lua
domain=${ROADWATCH_XMPP_DOMAIN:-roadwatch.local}

usage() { echo "usage: roadwatch-xmpp-account add|rotate|remove NAME" >&2; exit 2; }
[ $# -eq 2 ] || usage
action=$1
name=$2
if ! printf '%s' "$name" | grep -Eqx '[A-Za-z0-9_-]{1,64}'; then
  echo "an account name is 1 to 64 characters of A-Z a-z 0-9 _ -" >&2
  exit 2
fi
case "$name" in
  gateway | collector) echo "$name is reserved for a RoadWatch service" >&2; exit 2 ;;
esac
# One command in the running server's admin shell, through standard input: the server ends
# the open sessions of a re-keyed or removed account.
shell() {
  out=$(printf '%s\n' "$1" | prosodyctl --config "$config" shell --quiet)
  case "$out" in
    *OK*) ;;
    *) echo "prosodyctl shell: $out" >&2; exit 1 ;;
  esac
}
new_password() { head -c 18 /dev/urandom | base64 | tr '+/' '-_'; }
case "$action" in
  add)
    password=$(new_password)
    # Through standard input (printf is the shell's own): never on a command line.
    printf '%s\n%s\n' "$password" "$password" |
      prosodyctl --config "$config" register "$name" "$domain" >/dev/null
    ;;
  rotate)
    password=$(new_password)
    shell "user:password(\"$name@$domain\", \"$password\")"
    ;;
  remove)
    shell "user:delete(\"$name@$domain\")"
    printf 'XMPP account %s@%s removed\n' "$name" "$domain"
    exit 0
    ;;
  *) usage ;;
esac
printf 'XMPP account %s@%s follows the alerts\npassword: %s\n' "$name" "$domain" "$password"
