"""Reading the process environment: each variable parsed and bounded one way, with an
ImproperlyConfigured that names it. settings.py and gunicorn.py both read through here, so the
number of gunicorn workers and threads that `check --deploy` counts database connections for is
the number gunicorn runs.
"""

import os

from django.core.exceptions import ImproperlyConfigured


def env_str(name: str, default: str = "") -> str:
    return os.environ.get(name, default).strip()


def env_bool(name: str, default: bool = False) -> bool:
    raw = env_str(name)
    if not raw:
        return default
    if raw.lower() in {"1", "true", "yes", "on"}:
        return True
    if raw.lower() in {"0", "false", "no", "off"}:
        return False
    raise ImproperlyConfigured(f"{name} must be a boolean (1/0, true/false), got {raw!r}.")


def env_int(name: str, default: int, *, minimum: int, maximum: int) -> int:
    raw = env_str(name)
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be a whole number, got {raw!r}.") from None
    if not minimum <= value <= maximum:
        raise ImproperlyConfigured(f"{name} must be between {minimum} and {maximum}, got {value}.")
    return value


def env_choice(name: str, default: str, choices: tuple[str, ...]) -> str:
    value = env_str(name, default).lower() or default
    if value not in choices:
        raise ImproperlyConfigured(f"{name} must be one of {', '.join(choices)}; got {value!r}.")
    return value


def env_list(name: str, default: list[str]) -> list[str]:
    raw = env_str(name)
    if not raw:
        return default
    return [item.strip() for item in raw.split(",") if item.strip()]


def web_concurrency() -> int:
    """gunicorn worker processes per web node (gunicorn's own advice: two per core, plus one)."""
    return env_int("WEB_CONCURRENCY", (os.cpu_count() or 1) * 2 + 1, minimum=1, maximum=1000)


def gunicorn_threads() -> int:
    """Threads per gunicorn worker, each with its own database connection."""
    return env_int("GUNICORN_THREADS", 4, minimum=1, maximum=1000)
