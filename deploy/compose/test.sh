#!/usr/bin/env bash
# `make compose-test`: the compose deployment built and booted for real, then checked end to
# end. Static checks (docker-compose config, hadolint), build (cached between runs), start
# under a project of its own on free loopback ports with fresh secrets, a fresh CA and two
# gateway instances sharing the load (profile `scaled`), wait for every healthcheck, run
# tests/compose/, and always tear down (containers, networks, volumes).
set -euo pipefail

cd "$(dirname "$0")/../.."
started=$SECONDS
project=${ROADWATCH_COMPOSE_PROJECT:-roadwatch-test}
work=.run/compose-test
env_file=$work/.env
health_timeout=${ROADWATCH_COMPOSE_HEALTH_TIMEOUT:-240}

say() { printf '\033[1m==>\033[0m %s\n' "$*"; }
elapsed() { echo "$((SECONDS - started)) s"; }

# dockerd is stopped again at the end when this run had to start it.
docker_was_running=0
docker info >/dev/null 2>&1 && docker_was_running=1

# Fresh secrets and a fresh CA every run (the volumes go with the run), and ports nobody else
# uses, all on loopback.
mkdir -p "$work"
rm -rf "$env_file" "$work/tls"
deploy/compose/prepare.sh --env-file "$env_file" --tls-dir "$work/tls"
free_ports=$(.venv/bin/python -c 'from roadwatch.runner.private import free_ports
print(*free_ports(4))')
read -r http_port mqtt_port mqtt_tls_port xmpp_port <<<"$free_ports"
cat >>"$env_file" <<EOF
ROADWATCH_HTTP_PORT=$http_port
ROADWATCH_MQTT_PORT=$mqtt_port
ROADWATCH_MQTT_TLS_PORT=$mqtt_tls_port
ROADWATCH_XMPP_PORT=$xmpp_port
ROADWATCH_HTTP_BIND=127.0.0.1
ROADWATCH_MQTT_BIND=127.0.0.1
ROADWATCH_MQTT_TLS_BIND=127.0.0.1
ROADWATCH_XMPP_BIND=127.0.0.1
ROADWATCH_COMPOSE_TLS_DIR=./$work/tls/containers
ROADWATCH_GATEWAY_PARTITIONS=2
EOF

# The `scaled` profile adds gateway-2: two gateway containers, as the partitions above say.
compose=(docker-compose --project-name "$project" --env-file "$env_file" --file compose.yaml
  --profile scaled)

say "static checks: docker-compose config, hadolint"
"${compose[@]}" config -q
deploy/compose/lint.sh

show_failure() {
  echo "---- docker-compose ps" >&2
  "${compose[@]}" ps >&2 || true
  echo "---- last log lines" >&2
  "${compose[@]}" logs --no-color --tail=30 >&2 || true
}

stop_dockerd() {
  local pid
  pid=$(cat .run/docker/dockerd.pid 2>/dev/null) || return 0
  kill "$pid" 2>/dev/null || return 0
  # Images and build cache stay on disk (/var/lib/docker) for the next run.
  for _ in $(seq 1 150); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  rm -f .run/docker/dockerd.pid
}

tear_down() {
  local status=$?
  [ "$status" -ne 0 ] && show_failure
  say "tearing down"
  "${compose[@]}" down --volumes --remove-orphans --timeout 20 >/dev/null 2>&1 || true
  [ "$docker_was_running" = 0 ] && stop_dockerd
  say "compose-test $([ "$status" -eq 0 ] && echo passed || echo FAILED) in $(elapsed)"
  exit "$status"
}
trap tear_down EXIT

say "building the images ($(elapsed))"
# The Python image once (through api): the other Python services use the same tag.
"${compose[@]}" build --parallel --quiet mysql mosquitto prosody api apache >"$work/build.log" 2>&1 ||
  { tail -n 40 "$work/build.log" >&2; exit 1; }

say "starting the stack on http://127.0.0.1:$http_port/, mqtts://127.0.0.1:$mqtt_tls_port and xmpp 127.0.0.1:$xmpp_port ($(elapsed))"
"${compose[@]}" up --detach --no-build 2>&1 | grep -v '^$' | sed 's/^/    /'

deadline=$((SECONDS + health_timeout))
while :; do
  states=$(docker ps --all --filter "label=com.docker.compose.project=$project" \
    --format '{{.Label "com.docker.compose.service"}}' |
    while read -r service; do
      id=$("${compose[@]}" ps -q "$service" | head -n 1)
      printf '%s=%s ' "$service" "$(docker inspect --format '{{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}' "$id")"
    done)
  waiting=$(tr ' ' '\n' <<<"$states" | grep -cv -e '=healthy$' -e '^$' || true)
  # One progress line per change (a terminal shows it in place).
  if [ "$states" != "${last_states:-}" ]; then
    if [ -t 1 ]; then printf '\r    health: %s' "$states"; else echo "    health: $states"; fi
    last_states=$states
  fi
  [ "$waiting" -eq 0 ] && break
  if [ "$SECONDS" -ge "$deadline" ]; then
    echo "not every service became healthy within ${health_timeout} s" >&2
    exit 1
  fi
  sleep 2
done
[ -t 1 ] && echo
say "all healthy ($(elapsed)); end-to-end tests against the containers"

ROADWATCH_COMPOSE_ENV_FILE=$env_file ROADWATCH_COMPOSE_PROJECT=$project \
  .venv/bin/pytest -q -p no:cacheprovider tests/compose/test_compose_smoke.py \
  tests/compose/test_compose_tls.py
