#!/usr/bin/env bash
# Everything the compose deployment needs before `docker-compose build`, each step skipped when
# already done:
#   - Docker (docker.io, docker-compose) from Debian, and a running dockerd (started by hand
#     where there is no systemd, its log in .run/docker/dockerd.log);
#   - the base image debian:bookworm-slim: pulled when a registry answers, else made with
#     debootstrap from the machine's own Debian mirror and imported;
#   - .env with the generated secrets (the same file `make up` uses);
#   - the certificates (runner/tls.py): the local CA and server certificate of `make up`, or the
#     operator's own, laid out for the containers in <tls dir>/containers/ (each server's copy
#     of the key owned by its account in its image);
#   - the web assets (web/vendor/) and the Python wheels of RoadWatch's dependencies, at the
#     versions of .venv, in build/docker/wheels/ (the Python image installs them offline).
# Usage: deploy/compose/prepare.sh [--env-file PATH] [--tls-dir DIR]   (DIR: .run/tls)
set -euo pipefail

cd "$(dirname "$0")/../.."
env_file=.env
tls_dir=.run/tls
while [ $# -gt 0 ]; do
  case "$1" in
    --env-file) env_file=$2; shift 2 ;;
    --tls-dir) tls_dir=$2; shift 2 ;;
    *) echo "usage: $0 [--env-file PATH] [--tls-dir DIR]" >&2; exit 2 ;;
  esac
done

BASE_IMAGE=debian:bookworm-slim
DOCKER_DIR=.run/docker
WHEELS=build/docker/wheels
# The machine's hard limit on open files is low here; containers must stay under it.
NOFILE=20000

say() { printf '\033[1m==>\033[0m %s\n' "$*"; }

install_docker() {
  local missing=() pkg
  for pkg in docker.io docker-compose debootstrap; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' ||
      missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return
  say "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

start_dockerd() {
  if docker info >/dev/null 2>&1; then
    return
  fi
  mkdir -p "$DOCKER_DIR"
  say "starting dockerd (log: $DOCKER_DIR/dockerd.log)"
  # runc: crun rejects this machine's hybrid cgroup layout. setsid: dockerd outlives this
  # script and is not hit by a Ctrl-C meant for it.
  setsid dockerd --default-runtime=runc --default-ulimit "nofile=$NOFILE:$NOFILE" \
    >"$DOCKER_DIR/dockerd.log" 2>&1 </dev/null &
  echo $! >"$DOCKER_DIR/dockerd.pid"
  local waited=0
  until docker info >/dev/null 2>&1; do
    if [ "$waited" -ge 300 ]; then
      tail -n 20 "$DOCKER_DIR/dockerd.log" >&2
      echo "dockerd did not answer within 30 s" >&2
      exit 1
    fi
    sleep 0.1
    waited=$((waited + 1))
  done
}

debian_mirror() {
  # The first Debian mirror the machine's apt uses (deb822 or one-line format).
  local mirror
  mirror=$(grep -hsE '^URIs:.*/debian/?$' /etc/apt/sources.list.d/*.sources | head -n 1 |
    awk '{print $2}')
  [ -n "$mirror" ] || mirror=$(grep -hsE '^deb .*/debian/? bookworm' /etc/apt/sources.list \
    /etc/apt/sources.list.d/*.list | head -n 1 | awk '{print $2}')
  echo "${mirror:-http://deb.debian.org/debian}"
}

make_base_image() {
  if docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    return
  fi
  if timeout 60 docker pull -q "$BASE_IMAGE" >/dev/null 2>&1; then
    say "pulled $BASE_IMAGE"
    return
  fi
  local mirror rootfs
  mirror=$(debian_mirror)
  rootfs=$(mktemp -d /tmp/roadwatch-rootfs.XXXXXX)
  say "no image registry: building $BASE_IMAGE with debootstrap from $mirror"
  debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >"$DOCKER_DIR/debootstrap.log" 2>&1 ||
    { tail -n 20 "$DOCKER_DIR/debootstrap.log" >&2; rm -rf "$rootfs"; exit 1; }
  # Like the official slim image: the three suites, no package cache, no lists, no docs.
  rm -f "$rootfs/etc/apt/sources.list"
  cat >"$rootfs/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $mirror
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: ${mirror%/debian*}/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
  cat >"$rootfs/etc/dpkg/dpkg.cfg.d/docker-slim" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
EOF
  cat >"$rootfs/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache ""; Dir::Cache::srcpkgcache "";
EOF
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
    "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/*
  tar -C "$rootfs" -c . | docker import -c 'CMD ["bash"]' - "$BASE_IMAGE" >/dev/null
  rm -rf "$rootfs"
  say "imported $BASE_IMAGE"
}

make_env_file() {
  ROADWATCH_ENV_TARGET=$env_file .venv/bin/python - <<'EOF'
import os
from pathlib import Path

from roadwatch.runner.envfile import ensure_env_file

added = ensure_env_file(Path(os.environ["ROADWATCH_ENV_TARGET"]))
if added:
    print(f"generated {len(added)} secrets into {os.environ['ROADWATCH_ENV_TARGET']}")
EOF
}

make_certificates() {
  ROADWATCH_ENV_TARGET=$env_file ROADWATCH_TLS_TARGET=$tls_dir .venv/bin/python - <<'EOF'
import os
from pathlib import Path

from roadwatch.runner.tls import prepare_for_containers
from roadwatch.settings import Settings

settings = Settings(_env_file=os.environ["ROADWATCH_ENV_TARGET"])
out = prepare_for_containers(settings, Path(os.environ["ROADWATCH_TLS_TARGET"]))
print(f"certificates for the containers in {out}/ (clients trust {out}/ca/ca.crt)")
EOF
}

build_wheels() {
  # Rebuilt only when the dependencies may have changed.
  local stamp=$WHEELS/.built
  if [ -f "$stamp" ] && [ "$stamp" -nt pyproject.toml ] && [ "$stamp" -nt .venv/.roadwatch-installed ]; then
    return
  fi
  say "building the Python wheels of the image (versions of .venv)"
  rm -rf "$WHEELS"
  mkdir -p "$WHEELS"
  local constraints requirements
  constraints=$(mktemp)
  requirements=$(mktemp)
  .venv/bin/pip freeze --exclude-editable >"$constraints"
  # RoadWatch's runtime dependencies as pyproject.toml lists them (not the dev ones), pinned to
  # what the tests ran with, plus the build backend that installs RoadWatch itself from source
  # inside the image.
  .venv/bin/python -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' >"$requirements"
  echo 'setuptools>=68' >>"$requirements"
  if ! .venv/bin/pip wheel --wheel-dir "$WHEELS" --constraint "$constraints" \
    --requirement "$requirements" >"$DOCKER_DIR/wheels.log" 2>&1; then
    tail -n 20 "$DOCKER_DIR/wheels.log" >&2
    exit 1
  fi
  rm -f "$constraints" "$requirements"
  touch "$stamp"
}

mkdir -p "$DOCKER_DIR"
install_docker
start_dockerd
make_base_image
[ -x .venv/bin/python ] && [ -d web/vendor ] || deploy/native/bootstrap.sh
make_env_file
make_certificates
build_wheels
