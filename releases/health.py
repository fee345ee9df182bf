"""What /readyz asks: can this process reach its database, its broker and its object store, and sign links?"""

from django.conf import settings
from django.db import connection

from .storage import release_store

TIMEOUT_SECONDS = 2


def database() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")


def broker() -> None:
    if not settings.REDIS_URL:
        return  # embedded default: tasks run in-process
    import redis

    client = redis.Redis.from_url(
        settings.REDIS_URL, socket_connect_timeout=TIMEOUT_SECONDS, socket_timeout=TIMEOUT_SECONDS
    )
    try:
        client.ping()
    except redis.RedisError as error:
        raise ConnectionError(f"Redis at {_without_password(settings.REDIS_URL)} does not answer ({error})") from None
    finally:
        client.close()


def storage() -> None:
    release_store().check()


def signing() -> None:
    """Download links can be signed: the process holds valid credentials (S3 links die with theirs)."""
    from . import signing

    problem = signing.credentials_problem()
    if problem and not problem[1]:
        raise RuntimeError(problem[0])


def signing_warning() -> str | None:
    """Links are signed but would end before SIGNED_URL_TTL (credentials about to expire, renewal failing)."""
    from . import signing

    problem = signing.credentials_problem()
    return problem[0] if problem and problem[1] else None


def _without_password(url: str) -> str:
    if "@" not in url:
        return url
    scheme, rest = url.split("://", 1)
    return f"{scheme}://***@{rest.split('@', 1)[1]}"


CHECKS = {"database": database, "broker": broker, "storage": storage, "signing": signing}
WARNINGS = {"signing": signing_warning}  # shown by /readyz, which still answers 200
