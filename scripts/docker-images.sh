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

# standin NAME PACKAGES SETUP: a Debian minbase image with PACKAGES, SETUP run in its root
# (a shell snippet, with the root as $1); prints the imported image's name.
standin() {
  local name=$1 packages=$2 setup=$3
  local recipe digest tarball image
  recipe=$(printf '%s\n' "$DEBIAN_SUITE" "$DEBIAN_MIRROR" minbase "$packages" "$setup")
  digest=$(printf '%s' "$recipe" | sha256sum | cut -c1-16)
  tarball="$CACHE/$name-$DEBIAN_SUITE-$digest.tar"
  image="model-releases-standin/$name:$digest"
  if [ ! -s "$tarball" ]; then
    local root="$WORK/rootfs-$name" started
    started=$(date +%s)
    say "making a stand-in for $name with debootstrap ($DEBIAN_SUITE minbase + $packages; cached as $tarball)" >&2
    debootstrap --variant=minbase --include="$packages" "$DEBIAN_SUITE" "$root" "$DEBIAN_MIRROR" \
      >"$WORK/debootstrap-$name.log" 2>&1 || { tail -n 20 "$WORK/debootstrap-$name.log" >&2; return 1; }
    bash -euc "$setup" setup "$root"
    rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb \
      "$root"/var/log/*.log "$root"/usr/share/doc/* "$root"/usr/share/man/*
    tar --numeric-owner -C "$root" -cf "$tarball.part" .
    mv "$tarball.part" "$tarball"
    rm -rf "$root"
    say "stand-in $name made in $(($(date +%s) - started)) s ($(du -m "$tarball" | cut -f1) MB)" >&2
  fi
  "$DOCKER" image inspect "$image" >/dev/null 2>&1 || "$DOCKER" import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
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
