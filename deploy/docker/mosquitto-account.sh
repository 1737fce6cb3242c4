#!/bin/sh
# The container's `roadwatch accounts add KIND ID`: create (or reset) one MQTT account in the
# broker's password file, make the broker re-read it, and print the new password.
#   docker-compose exec mosquitto roadwatch-mqtt-account vehicle car42
set -eu

usage() { echo "usage: roadwatch-mqtt-account vehicle|owntracks ID" >&2; exit 2; }
[ $# -eq 2 ] || usage
kind=$1
name=$2
case "$kind" in
  vehicle) topic="vehicles/$name/#" ;;
  owntracks) topic="owntracks/$name/#" ;;
  *) usage ;;
esac
# SPEC §2: 1 to 64 characters of A-Z a-z 0-9 _ -
if ! printf '%s' "$name" | grep -Eqx '[A-Za-z0-9_-]{1,64}'; then
  echo "an account name is 1 to 64 characters of A-Z a-z 0-9 _ -" >&2
  exit 2
fi
if [ "$name" = "${ROADWATCH_MQTT_GATEWAY_USER:-}" ] || [ "$name" = "${ROADWATCH_MQTT_FLEET_USER:-}" ]; then
  echo "$name is reserved for a RoadWatch service" >&2
  exit 2
fi
password=$(head -c 18 /dev/urandom | base64 | tr '+/' '-_')
# Through standard input (printf is the shell's own): never on a command line.
printf '%s\n%s\n' "$password" "$password" |
  mosquitto_passwd "${ROADWATCH_MOSQUITTO_DIR:?}/passwd" "$name" >/dev/null
# PID 1 is the container's init, which passes the signal on to the broker.
kill -HUP 1
printf '%s account %s may publish to %s\npassword: %s\n' "$kind" "$name" "$topic" "$password"
