#!/bin/sh
# Render the shared Mosquitto template like the native runner does (every ${NAME} must be
# set), create or update the gateway and fleet accounts, then run the broker.
# Accounts added later (vehicles, OwnTracks) stay in the password file across restarts.
set -eu

templates=/etc/roadwatch/mosquitto
dir=${ROADWATCH_MOSQUITTO_DIR:?}

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

render "$templates/mosquitto.conf" "$dir/mosquitto.conf"
render "$templates/acl" "$dir/acl"
chmod 0640 "$dir/acl"

set_password() {
  if [ -z "$2" ]; then
    echo "no MQTT password for $1: set it in .env (make up generates it)" >&2
    exit 1
  fi
  create=
  [ -f "$dir/passwd" ] || create=-c
  # The password goes through standard input (printf is the shell's own), never on a
  # command line where /proc would show it.
  # shellcheck disable=SC2086 # unquoted on purpose: empty, it is no argument at all
  printf '%s\n%s\n' "$2" "$2" | mosquitto_passwd $create "$dir/passwd" "$1" >/dev/null
}
set_password "${ROADWATCH_MQTT_GATEWAY_USER:?}" "${ROADWATCH_MQTT_GATEWAY_PASSWORD:-}"
set_password "${ROADWATCH_MQTT_FLEET_USER:?}" "${ROADWATCH_MQTT_FLEET_PASSWORD:-}"
chmod 0600 "$dir/passwd"

exec mosquitto -c "$dir/mosquitto.conf"
