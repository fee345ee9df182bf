"""gunicorn settings for production: `gunicorn -c site_config/gunicorn.py site_config.wsgi`.

Threads, not processes alone: with the local storage backend the site serves
file bytes itself (sendfile), and a thread busy with a long download must not
make the arbiter think the worker hung.

Every value comes through site_config/env.py, as the settings' do: a bad one stops gunicorn with
the variable's name, and the workers and threads are the ones `check --deploy` counted.
"""

from site_config.env import env_int, env_str, gunicorn_threads, web_concurrency

bind = env_str("GUNICORN_BIND", "0.0.0.0:8000")
workers = web_concurrency()
worker_class = "gthread"
threads = gunicorn_threads()
timeout = env_int("GUNICORN_TIMEOUT", 60, minimum=1, maximum=3600)
graceful_timeout = 30
keepalive = 5
max_requests = 5000  # recycle workers now and then; jitter keeps them from restarting together
max_requests_jitter = 500
accesslog = "-"
access_log_format = '%(h)s "%(r)s" %(s)s %(B)s %(M)sms "%(a)s"'
errorlog = "-"
forwarded_allow_ips = env_str("FORWARDED_ALLOW_IPS", "127.0.0.1")
