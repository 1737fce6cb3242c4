#!/bin/sh
# Start one RoadWatch service: `roadwatch-entrypoint api` runs `roadwatch api`.
# With ROADWATCH_MIGRATE_AT_START=1 the schema migrations are applied first; they are
# idempotent and serialised by a database lock, so services starting together are safe.
set -eu
if [ "${ROADWATCH_MIGRATE_AT_START:-0}" = 1 ]; then
  roadwatch migrate
fi
exec roadwatch "$@"
