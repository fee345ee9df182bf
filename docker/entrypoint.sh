#!/bin/sh
# Container entrypoint: wait for what the role needs, then become that role.
#   web      gunicorn (waits for the database, the broker and the object store; check --deploy first)
#   worker   a Celery worker
#   beat     the Celery beat scheduler (one is enough; more send each job once per period too)
#   migrate  apply database migrations once, then exit (the compose stack runs it before the others)
#   *        anything else runs as a manage.py command
set -eu

WAIT_TIMEOUT=${WAIT_TIMEOUT:-90}
role=${1:-web}
[ $# -gt 0 ] && shift

case $role in
  web)
    python manage.py wait_for_services --timeout "$WAIT_TIMEOUT"
    # Configuration that cannot keep the links' promise stops here (signing credentials' lifetime).
    python manage.py check --deploy --fail-level ERROR
    exec gunicorn -c site_config/gunicorn.py site_config.wsgi "$@" ;;
  worker)
    python manage.py wait_for_services --timeout "$WAIT_TIMEOUT"
    # `docker stop` (and Kubernetes) send SIGTERM, then SIGKILL after a grace period. As SIGQUIT,
    # it gives running tasks CELERY_WORKER_SOFT_SHUTDOWN_TIMEOUT seconds, then hands the
    # unfinished ones (acks late) back to the broker for another worker, before the grace ends.
    export REMAP_SIGTERM="${REMAP_SIGTERM:-SIGQUIT}"
    exec celery -A site_config worker --loglevel "${LOG_LEVEL:-INFO}" "$@" ;;
  beat)
    python manage.py wait_for_services --timeout "$WAIT_TIMEOUT" --only database --only broker
    exec celery -A site_config beat --loglevel "${LOG_LEVEL:-INFO}" "$@" ;;
  migrate)
    python manage.py wait_for_services --timeout "$WAIT_TIMEOUT" --only database
    exec python manage.py migrate --noinput "$@" ;;
  *)
    exec python manage.py "$role" "$@" ;;
esac
