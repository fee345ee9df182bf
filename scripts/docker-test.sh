#!/usr/bin/env bash
# `make docker-test`: build the production image and run its roles against real services.
#
#   1. installs Debian's docker.io (and debootstrap, docker-compose) when missing;
#   2. starts a Docker engine of its own: data root and socket under a temporary directory,
#      no bridge, no iptables (containers use the host's network, on loopback only);
#   3. makes stand-ins for python:3.11-slim and the compose stack's other images (postgres,
#      redis, varnish, minio) with debootstrap when no registry is reachable, cached outside
#      the clone by the hash of each recipe, so later runs only import them;
#   4. builds docker/Dockerfile with --network host, handing it this machine's way to the
#      package index (index URLs as build args, the CA bundle as a BuildKit secret);
#   5. checks docker/compose.yaml (alone and with compose.host-network.yaml) with the installed
#      Compose (Debian's v1);
#   6. runs tests/docker/journey.py (pytest), which starts the roles from the image,
#      tests/docker/upload_journey.py, an admin upload across two web nodes, and
#      tests/docker/compose_journey.py, which brings the compose stack itself up;
#   7. removes its containers and stops its engine, by pid, whatever happened.
#
# Environment: DOCKER_TEST_CACHE (default $XDG_CACHE_HOME/model-releases-docker),
# DOCKER_TEST_KEEP=1 keeps the temporary directory, DOCKER_TEST_CONTEXT builds another
# checkout's image (the journey stays this one's), PYTEST_ARGS for the journey's pytest (e.g.
# PYTEST_ARGS='-k once_per_period -x' runs one test; the image is still built and checked first).
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf 'docker-test: %s\n' "$*"; }
elapsed() { echo $(($(date +%s) - $1)); }
started_at=$(date +%s)

# --- 1. packages ---------------------------------------------------------------------------
need=()
[ -x /usr/sbin/dockerd ] || need+=(docker.io)
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v docker-compose >/dev/null || need+=(docker-compose)
if [ ${#need[@]} -gt 0 ]; then
  say "installing ${need[*]}"
  if [ "$(id -u)" = 0 ]; then sudo=""; else sudo="sudo"; fi
  if ! { $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq \
      -o DPkg::Lock::Timeout=300 "${need[@]}" >/dev/null; }; then
    say "SKIPPED: no Docker engine can be installed on this machine (apt-get install ${need[*]} failed)"
    exit 0
  fi
fi
# Debian's client (20.10) speaks BuildKit without the buildx plugin; a newer client elsewhere on
# PATH may not.
DOCKER=${DOCKER:-/usr/bin/docker}
export DOCKER

# --- 2. an engine of our own ---------------------------------------------------------------
WORK=$(mktemp -d "${TMPDIR:-/tmp}/model-releases-docker.XXXXXX")
export DOCKER_HOST="unix://$WORK/docker.sock"
dockerd_pid=""
cleanup() {
  status=$?
  if [ -n "$dockerd_pid" ] && kill -0 "$dockerd_pid" 2>/dev/null; then
    containers=$("$DOCKER" ps -aq 2>/dev/null || true)
    # shellcheck disable=SC2086 # one id per word
    [ -z "$containers" ] || "$DOCKER" rm -f $containers >/dev/null 2>&1 || true
    kill "$dockerd_pid"
    for _ in $(seq 1 100); do kill -0 "$dockerd_pid" 2>/dev/null || break; sleep 0.2; done
    kill -9 "$dockerd_pid" 2>/dev/null || true
  fi
  [ ! -s "$WORK/figures.txt" ] || { say "figures:"; sed 's/^/  /' "$WORK/figures.txt"; }
  [ "$status" = 0 ] || { say "dockerd log (tail):"; tail -n 30 "$WORK/dockerd.log" 2>/dev/null || true; }
  # What the engine left mounted under its directories (network namespaces, overlays), deepest first.
  awk -v work="$WORK" 'index($2, work) == 1 { print $2 }' /proc/mounts | sort -r | while read -r point; do
    umount "$point" 2>/dev/null || umount -l "$point" 2>/dev/null || true
  done
  if [ "${DOCKER_TEST_KEEP:-0}" = 1 ]; then say "kept $WORK"; else rm -rf "$WORK"; fi
  say "$( [ "$status" = 0 ] && echo passed || echo FAILED ) in $(elapsed "$started_at") s"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say "starting dockerd (data root $WORK/root)"
/usr/sbin/dockerd \
  --data-root "$WORK/root" --exec-root "$WORK/exec" --pidfile "$WORK/dockerd.pid" \
  --host "$DOCKER_HOST" --containerd-namespace model-releases-test \
  --bridge=none --iptables=false --ip-masq=false --ip-forward=false \
  --storage-driver overlay2 >"$WORK/dockerd.log" 2>&1 &
dockerd_pid=$!
for _ in $(seq 1 150); do "$DOCKER" info >/dev/null 2>&1 && break; sleep 0.2; done
"$DOCKER" info >/dev/null

# --- 3. base images: the official one if a registry answers, else a debootstrap stand-in ------
CACHE=${DOCKER_TEST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/model-releases-docker}
mkdir -p "$CACHE"
# shellcheck source=scripts/docker-images.sh
. scripts/docker-images.sh
PYTHON_IMAGE=$(python_image)
export PYTHON_IMAGE
compose_images
say "compose images: $POSTGRES_IMAGE $REDIS_IMAGE $VARNISH_IMAGE $MINIO_IMAGE"

# --- 4. the application image --------------------------------------------------------------
APP_IMAGE=model-releases:test
CONTEXT=${DOCKER_TEST_CONTEXT:-.}  # another checkout's files, to compare (e.g. a release's)
export APP_IMAGE
build_args=(--build-arg "PYTHON_IMAGE=$PYTHON_IMAGE")
for name in PIP_INDEX_URL PIP_EXTRA_INDEX_URL PIP_TRUSTED_HOST HTTP_PROXY HTTPS_PROXY NO_PROXY; do
  value=$(pip_setting "$name")
  [ -z "$value" ] || build_args+=(--build-arg "$name=$value")
done
ca_bundle=$(pip_setting PIP_CERT)
[ -z "$ca_bundle" ] || build_args+=(--secret "id=pip_cert,src=$ca_bundle")
say "building $APP_IMAGE on $PYTHON_IMAGE (${build_args[*]})"
build_started=$(date +%s)
DOCKER_BUILDKIT=1 "$DOCKER" build --progress plain --network host "${build_args[@]}" \
  -f "$CONTEXT/docker/Dockerfile" -t "$APP_IMAGE" "$CONTEXT" >"$WORK/build.log" 2>&1 \
  || { tail -n 40 "$WORK/build.log"; exit 1; }
IMAGE_BUILD_SECONDS=$(elapsed "$build_started")
IMAGE_SIZE_MB=$(( $("$DOCKER" image inspect -f '{{.Size}}' "$APP_IMAGE") / 1000000 ))
export IMAGE_BUILD_SECONDS IMAGE_SIZE_MB
say "built $APP_IMAGE: ${IMAGE_SIZE_MB} MB in ${IMAGE_BUILD_SECONDS} s"

# --- 5. the compose file, as the compose implementation installed here reads it ---------------
# (Debian's is Compose v1, which refuses what v2 alone accepts, such as a top-level `name:`.)
mkdir -p "$WORK/stack"
ln -s "$PWD/docker" "$WORK/stack/docker"
cp .env.example "$WORK/stack/.env"  # the file's env_file is ../.env, as shipped
for override in "" docker/compose.host-network.yaml; do
  docker-compose -p model-releases -f "$WORK/stack/docker/compose.yaml" ${override:+-f "$WORK/stack/$override"} \
    --env-file "$WORK/stack/.env" config -q
done
say "docker/compose.yaml is valid for $(docker-compose version --short)"

# --- 6. the journey ------------------------------------------------------------------------
say "running the roles (tests/docker/journey.py, upload_journey.py) and the compose stack (compose_journey.py)"
DOCKER_TEST_FIGURES="$WORK/figures.txt"
export DOCKER_TEST_FIGURES
printf 'image: %s MB, built in %s s\n' "$IMAGE_SIZE_MB" "$IMAGE_BUILD_SECONDS" >"$DOCKER_TEST_FIGURES"
# shellcheck disable=SC2086 # PYTEST_ARGS is a list of words
"${PYTHON:-.venv/bin/python}" -m pytest -p no:cacheprovider tests/docker/journey.py tests/docker/upload_journey.py \
  tests/docker/compose_journey.py \
  ${PYTEST_ARGS:-}
