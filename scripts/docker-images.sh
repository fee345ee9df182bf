# Base images for `make docker-test` (sourced by scripts/docker-test.sh; needs DOCKER, CACHE, WORK).
#
# Where a registry answers, the official images are pulled. Where none does, stand-ins are
# made from Debian's archive with debootstrap and `docker import`: each from a recipe (suite,
# packages, a few commands), cached in $CACHE as a root filesystem tarball named by the hash
# of its recipe, so a changed recipe builds anew and an unchanged one is only imported.
# shellcheck shell=bash

DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
DEBIAN_SUITE=bookworm

registry_answers() {
  curl -s -o /dev/null --max-time 5 https://registry-1.docker.io/v2/ 2>/dev/null
}

# standin NAME PACKAGES SETUP [CHANGES [FILE...]]: a Debian minbase image with PACKAGES, each
# FILE copied to /usr/local/bin, SETUP run in its root (a shell snippet, with the root as $1),
# and CHANGES (Dockerfile lines, one a line: ENTRYPOINT, WORKDIR) applied by the import; prints
# the imported image's name. The files' contents are part of the recipe.
standin() {
  local name=$1 packages=$2 setup=$3 changes=${4:-}
  shift $(($# < 4 ? $# : 4))
  local recipe digest tarball image file
  local -a change_args=()
  recipe=$(printf '%s\n' "$DEBIAN_SUITE" "$DEBIAN_MIRROR" minbase "$packages" "$setup")
  [ -z "$changes$*" ] || recipe+=$(printf '%s\n' "$changes"; cat "$@")
  digest=$(printf '%s' "$recipe" | sha256sum | cut -c1-16)
  tarball="$CACHE/$name-$DEBIAN_SUITE-$digest.tar"
  image="model-releases-standin/$name:$digest"
  if [ ! -s "$tarball" ]; then
    local root="$WORK/rootfs-$name" started
    started=$(date +%s)
    say "making a stand-in for $name with debootstrap ($DEBIAN_SUITE minbase + $packages; cached as $tarball)" >&2
    debootstrap --variant=minbase --include="$packages" "$DEBIAN_SUITE" "$root" "$DEBIAN_MIRROR" \
      >"$WORK/debootstrap-$name.log" 2>&1 || { tail -n 20 "$WORK/debootstrap-$name.log" >&2; return 1; }
    for file in "$@"; do install -m 755 "$file" "$root/usr/local/bin/"; done
    # (`|| return`: errexit does not reach into the $(...) this runs in; a failed recipe is not cached)
    bash -euc "$setup" setup "$root" || { say "the setup of stand-in $name failed" >&2; rm -rf "$root"; return 1; }
    rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb \
      "$root"/var/log/*.log "$root"/usr/share/doc/* "$root"/usr/share/man/*
    tar --numeric-owner -C "$root" -cf "$tarball.part" .
    mv "$tarball.part" "$tarball"
    rm -rf "$root"
    say "stand-in $name made in $(($(date +%s) - started)) s ($(du -m "$tarball" | cut -f1) MB)" >&2
  fi
  while IFS= read -r file; do [ -z "$file" ] || change_args+=(--change "$file"); done <<<"$changes"
  "$DOCKER" image inspect "$image" >/dev/null 2>&1 || "$DOCKER" import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' "${change_args[@]}" \
    "$tarball" "$image" >/dev/null
  echo "$image"
}

# python:3.11-slim: Debian's python3 (3.11 on bookworm), venv, and python at /usr/local/bin.
python_image() {
  if registry_answers && "$DOCKER" pull -q python:3.11-slim >/dev/null 2>&1; then
    echo python:3.11-slim
    return
  fi
  # shellcheck disable=SC2016 # $1 is expanded by the setup shell
  standin python-3.11-slim "python3,python3-venv,python-is-python3,ca-certificates" \
    'ln -sf /usr/bin/python3 "$1/usr/local/bin/python"; ln -sf /usr/bin/python3 "$1/usr/local/bin/python3"'
}

# The compose stack's other images (docker/compose.yaml's *_IMAGE defaults), exported by name:
# the official ones where a registry answers, else stand-ins from Debian bookworm's packages
# (PostgreSQL 15, Redis 7.0, Varnish 7.1 with varnish-modules) and, for MinIO, which Debian
# lacks, moto's S3 server behind `minio server` and `mc` shims (tests/docker/standins/).
compose_images() {
  if registry_answers; then
    export POSTGRES_IMAGE=postgres:16-alpine REDIS_IMAGE=redis:7-alpine VARNISH_IMAGE=varnish:7.5 \
      MINIO_IMAGE=minio/minio:latest MC_IMAGE=minio/mc:latest
    return
  fi
  local standins=tests/docker/standins
  # shellcheck disable=SC2016 # $1 is expanded by the setup shell
  POSTGRES_IMAGE=$(standin postgres "postgresql-15" \
    'ln -s /usr/lib/postgresql/15/bin/* "$1/usr/local/bin/"' \
    $'ENTRYPOINT ["postgres-entrypoint"]\nCMD ["postgres"]' "$standins/postgres-entrypoint")
  # shellcheck disable=SC2016
  REDIS_IMAGE=$(standin redis "redis-server" 'mkdir -p "$1/data"' 'WORKDIR /data')
  VARNISH_IMAGE=$(standin varnish "varnish,varnish-modules" ':')
  # moto from the package index, reached as pip is here (exported for the setup shell).
  STANDIN_PIP_INDEX_URL=$(pip_setting PIP_INDEX_URL) STANDIN_PIP_CERT=$(pip_setting PIP_CERT)
  export STANDIN_PIP_INDEX_URL STANDIN_PIP_CERT
  # shellcheck disable=SC2016
  MINIO_IMAGE=$(standin minio "python3,python3-venv,ca-certificates" '
    cp /etc/resolv.conf "$1/etc/resolv.conf"
    # Only the index, its CA and the proxies reach pip in the root: not this machine'"'"'s paths.
    pip_env=(PATH=/usr/bin:/bin LANG=C.UTF-8 HOME=/root PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1)
    [ -z "$STANDIN_PIP_INDEX_URL" ] || pip_env+=(PIP_INDEX_URL="$STANDIN_PIP_INDEX_URL")
    if [ -n "$STANDIN_PIP_CERT" ]; then cp "$STANDIN_PIP_CERT" "$1/tmp/ca.crt"; pip_env+=(PIP_CERT=/tmp/ca.crt); fi
    for name in HTTP_PROXY HTTPS_PROXY NO_PROXY http_proxy https_proxy no_proxy; do
      [ -z "${!name:-}" ] || pip_env+=("$name=${!name}")
    done
    chroot "$1" /usr/bin/env -i "${pip_env[@]}" python3 -m venv /opt/moto
    chroot "$1" /usr/bin/env -i "${pip_env[@]}" /opt/moto/bin/pip install -q "moto[server]==5.2.5" "crc32c==2.9.post0"
    rm -f "$1/tmp/ca.crt" "$1/etc/resolv.conf"' \
    'ENTRYPOINT ["minio"]' "$standins/minio" "$standins/mc")
  MC_IMAGE=$MINIO_IMAGE  # one image, both shims
  export POSTGRES_IMAGE REDIS_IMAGE VARNISH_IMAGE MINIO_IMAGE MC_IMAGE
}

# pip_setting NAME: how this machine reaches the package index, for the build: the PIP_*
# variable if set, else pip's own configuration (pip config: /etc/pip.conf, /etc/xdg/pip,
# the user's); index URLs only when a container can reach them (http, https).
pip_setting() {
  local name=$1 value=${!1:-} key
  if [ -z "$value" ]; then
    case $name in
      PIP_CERT) key=cert ;;
      PIP_INDEX_URL) key=index-url ;;
      PIP_EXTRA_INDEX_URL) key=extra-index-url ;;
      PIP_TRUSTED_HOST) key=trusted-host ;;
      *) key="" ;;
    esac
    [ -z "$key" ] || value=$("${PYTHON:-.venv/bin/python}" -m pip config get "global.$key" 2>/dev/null || true)
  fi
  case $name in
    PIP_CERT) [ -n "$value" ] || value=${REQUESTS_CA_BUNDLE:-${SSL_CERT_FILE:-}}
              [ -f "$value" ] || value="" ;;
    PIP_INDEX_URL | PIP_EXTRA_INDEX_URL)
      # shellcheck disable=SC2086 # a list of URLs, one a word
      value=$(printf '%s\n' $value | { grep -E '^https?://' || true; } | tr '\n' ' ' | sed 's/ $//') ;;
  esac
  printf '%s' "$value"
}
