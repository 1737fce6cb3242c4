#!/bin/sh
# Render the shared Mosquitto template like the native runner does (every ${NAME} must be
# set), hash the gateway and fleet passwords, join them with the account registry's hashes
# and ACL sections (adapters/accounts.py, written by `docker-compose run --rm accounts`), and
# run the broker. A change of the registry is applied within a second: the files are rebuilt
# and the broker re-reads them (SIGHUP), ending the sessions of removed or re-keyed accounts.
set -eu

templates=/etc/roadwatch/mosquitto
dir=${ROADWATCH_MOSQUITTO_DIR:?}
accounts=${ROADWATCH_ACCOUNTS_DIR:?}

render() {
  names=$(grep -o '\${[A-Z][A-Z0-9_]*}' "$1" | sort -u)
  for name in $names; do
    var=${name#??}
    var=${var%?}
    if ! printenv "$var" >/dev/null; then
      echo "no value for $name in $1" >&2
      exit 1
    fi
  done
  envsubst "$names" <"$1" >"$2"
}

umask 077
render "$templates/mosquitto.conf" "$dir/mosquitto.conf"
render "$templates/acl" "$dir/acl.services"

rm -f "$dir/passwd.services"
set_password() {
  if [ -z "$2" ]; then
    echo "no MQTT password for $1: set it in .env (make up generates it)" >&2
    exit 1
  fi
  create=
  [ -f "$dir/passwd.services" ] || create=-c
  # The password goes through standard input (printf is the shell's own), never on a
  # command line where /proc would show it.
  # shellcheck disable=SC2086 # unquoted on purpose: empty, it is no argument at all
  printf '%s\n%s\n' "$2" "$2" | mosquitto_passwd $create "$dir/passwd.services" "$1" >/dev/null
}
set_password "${ROADWATCH_MQTT_GATEWAY_USER:?}" "${ROADWATCH_MQTT_GATEWAY_PASSWORD:-}"
set_password "${ROADWATCH_MQTT_FLEET_USER:?}" "${ROADWATCH_MQTT_FLEET_PASSWORD:-}"
# The healthcheck logs in as the gateway with mosquitto_sub's own options file, so the
# password is on no command line (`ps` on the host shows every container's processes).
mkdir -p "$dir/healthcheck"
printf -- '-u %s\n-P %s\n' "$ROADWATCH_MQTT_GATEWAY_USER" "$ROADWATCH_MQTT_GATEWAY_PASSWORD" \
  >"$dir/healthcheck/mosquitto_sub"
unset ROADWATCH_MQTT_GATEWAY_PASSWORD ROADWATCH_MQTT_FLEET_PASSWORD

# Services first, then the registry's accounts; each file replaced at once.
combine() {
  cat "$dir/passwd.services" "$accounts/mqtt.passwd" >"$dir/passwd.new" 2>/dev/null ||
    cp "$dir/passwd.services" "$dir/passwd.new"
  mv "$dir/passwd.new" "$dir/passwd"
  cat "$dir/acl.services" "$accounts/mqtt.acl" >"$dir/acl.new" 2>/dev/null ||
    cp "$dir/acl.services" "$dir/acl.new"
  mv "$dir/acl.new" "$dir/acl"
}
stamp() { stat -c '%i %Y %s' "$accounts/accounts.json" 2>/dev/null || echo none; }

seen=$(stamp)
combine
broker=$$
# The watcher outlives the exec below: $$ is then the broker itself.
(
  while sleep 1; do
    now=$(stamp)
    if [ "$now" != "$seen" ]; then
      seen=$now
      combine
      kill -HUP "$broker" 2>/dev/null || exit 0
    fi
  done
) &

exec mosquitto -c "$dir/mosquitto.conf"
