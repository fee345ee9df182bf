#!/usr/bin/env bash
# Make sure the services the test suite talks to are up: the machine's
# PostgreSQL and Redis on loopback. Starts them when they are installed but
# stopped; says clearly what is missing otherwise.
set -euo pipefail

# Debian packages the tests use: varnishd with the xkey vmod (CDN tests), and shellcheck,
# dash and curl for the start-script client, and chromium for the browser tests.
need_packages=()
command -v varnishd >/dev/null || need_packages+=(varnish)
command -v shellcheck >/dev/null || need_packages+=(shellcheck)
command -v dash >/dev/null || need_packages+=(dash)
command -v curl >/dev/null || need_packages+=(curl)
command -v strace >/dev/null || need_packages+=(strace)  # shows a later client run opens no weight file
[ -x /usr/bin/chromium ] || need_packages+=(chromium)  # browser tests (Playwright drives Debian's build)
command -v npm >/dev/null || need_packages+=(npm)  # axe-core for the browser tests' accessibility checks
[ -e /usr/lib/x86_64-linux-gnu/varnish/vmods/libvmod_xkey.so ] || ls /usr/lib/*/varnish/vmods/libvmod_xkey.so >/dev/null 2>&1 \
  || need_packages+=(varnish-modules)
if [ ${#need_packages[@]} -gt 0 ]; then
  echo "ensure-services: installing ${need_packages[*]}"
  if [ "$(id -u)" = 0 ]; then sudo=""; else sudo="sudo"; fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need_packages[@]}" >/dev/null
fi

# axe-core, pinned by tests/package-lock.json, injected into pages by tests/test_browser.py.
tests_dir="$(dirname "$0")/../tests"
if [ ! -f "$tests_dir/node_modules/axe-core/axe.min.js" ]; then
  (cd "$tests_dir" && npm ci --no-audit --no-fund --silent)
fi

pg_up() { pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; }
redis_up() { redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null | grep -q PONG; }

wait_for() {  # wait_for NAME CHECK
  for _ in $(seq 1 50); do "$2" && return 0; sleep 0.2; done
  echo "ensure-services: $1 did not come up on 127.0.0.1" >&2
  return 1
}

if ! pg_up; then
  if command -v pg_ctlcluster >/dev/null && [ -d /etc/postgresql ]; then
    echo "ensure-services: starting PostgreSQL"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n 1)" main start
    wait_for PostgreSQL pg_up
  else
    echo "ensure-services: PostgreSQL is not running on 127.0.0.1:5432 and is not installed here" >&2
    exit 1
  fi
fi

if ! redis_up; then
  if command -v redis-server >/dev/null; then
    echo "ensure-services: starting Redis"
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
    wait_for Redis redis_up
  else
    echo "ensure-services: Redis is not running on 127.0.0.1:6379 and is not installed here" >&2
    exit 1
  fi
fi
echo "ensure-services: PostgreSQL and Redis are up"
