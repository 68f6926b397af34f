#!/usr/bin/env bash
# The local runtime for smtask's local mode: a Docker engine and the local SageMaker image.
#
#   scripts/runtime.sh up      start an engine if none answers, build the image if its inputs changed
#   scripts/runtime.sh down    stop the engine this script started (by its PID), nothing else
#
# The engine is the machine's, not a checkout's: which dockerd this script started is recorded
# in $TMPDIR/smtask-dockerd.pid, and `up` runs under a machine-wide lock, so two checkouts (or
# two commands) setting up at once neither start two engines nor build the image twice.
#
# Safe on a fresh Debian machine (installs docker.io and debootstrap with apt; smtask runs the
# SDK's compose files itself, with docker run: no docker-compose) and
# fast the second time: the engine is reused if it answers, the image if its inputs hash matches.
# Engine flags: no bridge, no iptables; containers use host networking only.
set -euo pipefail
shopt -s inherit_errexit

ROOT=$(cd "$(dirname "$0")/.." && pwd)
STATE="${SMTASK_STATE:-$ROOT/.smtask}"
ENGINE_PID="${TMPDIR:-/tmp}/smtask-dockerd.pid"
IMAGE="${SMTASK_LOCAL_IMAGE:-smtask-local:latest}"
BASE_TAG="smtask-base:bookworm"
mkdir -p "$STATE"

log() { echo "[runtime] $*" >&2; }

apt_install() {
    local missing=()
    for pkg in "$@"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
    [ ${#missing[@]} -eq 0 ] && return 0
    log "installing ${missing[*]} with apt"
    if [ ! -f "$STATE/.apt-updated" ]; then apt-get update -q >/dev/null && touch "$STATE/.apt-updated"; fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null
}

engine_up() {
    if docker info >/dev/null 2>&1; then return 0; fi
    command -v dockerd >/dev/null 2>&1 || apt_install docker.io
    command -v docker >/dev/null 2>&1 || apt_install docker.io
    log "starting dockerd (no bridge, no iptables)"
    # the engine must not inherit the lock descriptors of ./run and of this script
    nohup dockerd --bridge=none --iptables=false --ip-masq=false >"$STATE/dockerd.log" 2>&1 8>&- 9>&- &
    echo $! >"$ENGINE_PID"
    for _ in $(seq 1 60); do
        docker info >/dev/null 2>&1 && { log "dockerd up (pid $(cat "$ENGINE_PID"))"; return 0; }
        sleep 0.5
    done
    log "dockerd did not answer in 30 s; see $STATE/dockerd.log"
    return 1
}

engine_down() {
    [ -f "$ENGINE_PID" ] || return 0
    local pid; pid=$(cat "$ENGINE_PID")
    # a stale file must not make us signal whatever process now has that PID
    if kill -0 "$pid" 2>/dev/null && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = dockerd ]; then
        log "stopping dockerd (pid $pid)"
        kill "$pid"
        for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    fi
    rm -f "$ENGINE_PID"
}

base_image() {
    # A user with a registry sets SMTASK_BASE_IMAGE=python:3.11-slim; here none is reachable.
    if [ -n "${SMTASK_BASE_IMAGE:-}" ]; then echo "$SMTASK_BASE_IMAGE"; return 0; fi
    if ! docker image inspect "$BASE_TAG" >/dev/null 2>&1; then
        apt_install debootstrap
        local mirror rootfs
        # the mirror apt already uses (deb822 "URIs:" or one-line "deb" entries, comments skipped)
        mirror=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list 2>/dev/null \
            | grep -E '^(URIs:|deb )' | grep -oE 'https?://[^ ]+/debian/?( |$)' | head -n1 | tr -d ' ' || true)
        rootfs=$(mktemp -d "$STATE/rootfs.XXXX")
        log "debootstrapping $BASE_TAG from ${mirror:-http://deb.debian.org/debian} (about a minute)"
        if ! debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
            bookworm "$rootfs" "${mirror:-http://deb.debian.org/debian}" >"$STATE/debootstrap.log" 2>&1; then
            log "debootstrap failed; see $STATE/debootstrap.log"; rm -rf "$rootfs"; return 1
        fi
        tar -C "$rootfs" -c . | docker import - "$BASE_TAG" >/dev/null
        rm -rf "$rootfs"
    fi
    echo "$BASE_TAG"
}

image_up() {
    local base inputs_hash current ctx
    base=$(base_image)
    # every file of docker/ (links followed: algorithms/recordio.py is smtask's own codec)
    inputs_hash=$( (cd "$ROOT/docker" && find -L . -type f -not -path './wheels/*' -not -name '*.pyc' \
        | LC_ALL=C sort | while read -r f; do echo "$f"; cat "$f"; done; \
        docker image inspect -f '{{.Id}}' "$base") | sha256sum | cut -c1-16)
    current=$(docker image inspect -f '{{ index .Config.Labels "smtask.inputs" }}' "$IMAGE" 2>/dev/null || true)
    if [ "$current" = "$inputs_hash" ]; then log "image $IMAGE is current ($inputs_hash)"; return 0; fi
    log "building $IMAGE from $base"
    ctx="$STATE/image-context"
    rm -rf "$ctx" && mkdir -p "$ctx/wheels"
    (cd "$ROOT/docker" && find -L . -type f -not -path './wheels/*' -not -name '*.pyc' \
        -not -path '*/__pycache__/*' | while read -r f; do mkdir -p "$ctx/$(dirname "$f")"; cp -L "$f" "$ctx/$f"; done)
    python3 -m pip download --quiet --disable-pip-version-check --only-binary=:all: \
        --python-version 3.11 --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 \
        --implementation cp -d "$ctx/wheels" -r "$ctx/requirements.txt" 2>"$STATE/pip-download.log" \
        || { log "downloading wheels failed; see $STATE/pip-download.log"; return 1; }
    # pure-Python sdists (AWS's inference toolkit), built into wheels here, without their deps
    python3 -m pip wheel --quiet --disable-pip-version-check --no-deps -w "$ctx/wheels" \
        -r "$ctx/requirements-toolkit.txt" 2>>"$STATE/pip-download.log" \
        || { log "building the toolkit's wheel failed; see $STATE/pip-download.log"; return 1; }
    docker build --network host --build-arg "BASE_IMAGE=$base" \
        --label "smtask.inputs=$inputs_hash" -t "$IMAGE" "$ctx" >"$STATE/build.log" 2>&1 \
        || { log "docker build failed; see $STATE/build.log"; return 1; }
    rm -rf "$ctx"
    log "built $IMAGE ($inputs_hash)"
}

case "${1:-up}" in
    up)
        exec 8>"${TMPDIR:-/tmp}/smtask-runtime-up.lock"
        flock 8
        engine_up && image_up ;;
    down) engine_down ;;
    *) echo "usage: $0 up|down" >&2; exit 2 ;;
esac
