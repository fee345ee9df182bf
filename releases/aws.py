"""AWS sessions and credentials: the one place that decides which identity the site uses.

The S3 store (uploads, reads), the S3 signer (download links) and the CloudFront
client (invalidations) all take their sessions, clients and credentials from here.
Credentials are ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` when set, otherwise
botocore's default chain: environment, web identity (EKS IRSA), assume-role and
SSO profiles, ECS container and EC2 instance roles.

A presigned link stops working when the credentials that signed it expire, however
long its own expiry says. ``CredentialKeeper`` therefore holds the set that links
are signed with, knows when it expires, and fetches the next set in a background
thread well ahead of that, so no request ever waits on (or fails with) a fetch.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from django.conf import settings
from django.core.signals import setting_changed
from django.dispatch import receiver

logger = logging.getLogger(__name__)

# botocore tells when temporary credentials expire only through refresh_needed(seconds);
# credentials that still "need no refresh" this far ahead are treated as never expiring.
LONGEST_LIFETIME = 2**24  # about 194 days
AWS_SETTINGS = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_REGION_NAME"}


class AwsError(Exception):
    """AWS refused or could not be reached; the message says what was tried and why."""


class CredentialsUnavailable(AwsError):
    """No credentials that can sign anything right now."""


@contextmanager
def translated_errors(action: str, kind: type[Exception] = AwsError) -> Iterator[None]:
    """Turn botocore's exceptions into `kind` with a sentence a person can act on."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        yield
    except ClientError as error:
        raise kind(f"Could not {action}: {error_message(error)}.") from error
    except BotoCoreError as error:
        raise kind(f"Could not {action}: {error}.") from error


def error_code(error) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


def error_message(error) -> str:
    return error.response.get("Error", {}).get("Message") or error_code(error)


@dataclass(frozen=True)
class CredentialSet:
    """One snapshot of credentials, with the moment it stops working (None: static keys)."""

    access_key: str
    secret_key: str = field(repr=False)
    token: str | None = field(default=None, repr=False)
    expires_at: float | None = None  # unix seconds

    def seconds_left(self, now: float) -> float:
        return math.inf if self.expires_at is None else self.expires_at - now


# --- sessions and clients -------------------------------------------------------------------

_sessions: dict = {}
_sessions_lock = threading.Lock()


def session(keys: CredentialSet | None = None):
    """A boto3 session (one per process and identity): static `keys`, or botocore's default chain.

    With the chain, botocore refreshes temporary credentials itself before each call that
    needs them; those calls run in workers and commands, never on a download's request path.
    """
    cache_key = (keys.access_key, keys.secret_key, keys.token) if keys else None
    found = _sessions.get(cache_key)
    if found is None:
        import boto3

        with _sessions_lock:
            found = _sessions.get(cache_key)
            if found is None:
                found = _sessions[cache_key] = boto3.session.Session(
                    aws_access_key_id=keys.access_key if keys else None,
                    aws_secret_access_key=keys.secret_key if keys else None,
                    aws_session_token=keys.token if keys else None,
                )
    return found


def site_keys() -> CredentialSet | None:
    """The static keys from the environment (AWS_ACCESS_KEY_ID...), or None for the default chain."""
    if not settings.AWS_ACCESS_KEY_ID:
        return None
    return CredentialSet(settings.AWS_ACCESS_KEY_ID, settings.AWS_SECRET_ACCESS_KEY, settings.AWS_SESSION_TOKEN or None)


def client(service: str, *, keys: CredentialSet | None = None, endpoint_url=None, region_name=None, config=None):
    """A boto3 client for `service` with the given static keys, or the default chain."""
    return session(keys).client(
        service, endpoint_url=endpoint_url, region_name=region_name or settings.AWS_REGION_NAME, config=config
    )


def offline_client(service: str, *, endpoint_url: str | None, region_name: str, config=None):
    """A client with placeholder keys, for local computations (presigning a probe URL): no AWS call."""
    return client(
        service,
        keys=CredentialSet("PROBE", "PROBE"),
        endpoint_url=endpoint_url,
        region_name=region_name,
        config=config,
    )


@receiver(setting_changed)
def _forget_sessions(setting, **kwargs):
    if setting in AWS_SETTINGS:
        _sessions.clear()


# --- credentials for signing ----------------------------------------------------------------


def fetch_credentials(keys: CredentialSet | None = None) -> CredentialSet:
    """A fresh credential set: the static `keys`, or a new answer from botocore's chain.

    A new session each time, so that an assume-role or web-identity provider hands out a
    new set with its whole lifetime ahead, rather than botocore's cached one near its end.
    """
    if keys is not None:
        return keys
    import boto3

    with translated_errors("fetch AWS credentials", CredentialsUnavailable):
        found = boto3.session.Session().get_credentials()
        if found is None:
            raise CredentialsUnavailable(
                "No AWS credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
                "or run with a role (instance profile, ECS task role, IRSA, an assume-role profile)."
            )
        frozen = found.get_frozen_credentials()
        left = seconds_left(found)
    expires_at = None if left is None else time.time() + left
    return CredentialSet(frozen.access_key, frozen.secret_key, frozen.token, expires_at)


def seconds_left(credentials) -> int | None:
    """Whole seconds until botocore credentials expire (rounded down), or None if they never do.

    botocore keeps the expiry private; its public ``refresh_needed(refresh_in)`` answers
    "do fewer than `refresh_in` seconds remain?", so the answer is found by bisection.
    """
    needed = getattr(credentials, "refresh_needed", None)
    if needed is None or not needed(refresh_in=LONGEST_LIFETIME):
        return None
    at_least, fewer_than = 0, LONGEST_LIFETIME
    while fewer_than - at_least > 1:
        middle = (at_least + fewer_than) // 2
        if needed(refresh_in=middle):
            fewer_than = middle
        else:
            at_least = middle
    return at_least


class CredentialKeeper:
    """The credentials download links are signed with, renewed in the background before they expire.

    Every link must work for at least ``ttl`` seconds from when it is handed out, and a link
    dies with its credentials. So the next set is fetched ``lead`` seconds before the current
    one expires: when the provider allows, early enough that the set covers a whole signing
    window (2 x ttl, links keep their full lifetime), and never later than ttl plus a grace
    period in which failed attempts are retried. A failed fetch keeps the current set, which
    is still valid, and is logged and counted (`status()`, shown by /readyz and /metrics).
    """

    def __init__(self, fetch: Callable[[], CredentialSet], ttl: int, *, clock: Callable[[], float] = time.time):
        self._fetch, self.ttl, self._clock = fetch, ttl, clock
        self._current: CredentialSet | None = None
        self._started_in: int | None = None  # the process whose thread keeps the credentials fresh
        self._start_lock = threading.Lock()
        self.next_refresh = 0.0
        self.failures = 0  # consecutive failed fetches
        self.last_error = ""

    @property
    def grace(self) -> float:
        """Time kept for retries before links would get less than ttl: half the ttl, at most 15 minutes."""
        return min(self.ttl / 2, 900)

    def lead(self, lifetime: float) -> float:
        """How long before expiry to fetch the next set, for a set that lives `lifetime` seconds."""
        covers_a_window = 2 * self.ttl + self.grace
        keeps_the_ttl = self.ttl + self.grace
        return max(keeps_the_ttl, min(covers_a_window, lifetime / 2))

    @property
    def retry_delay(self) -> float:
        return min(max(self.grace / 5, 1.0), 60.0)

    def current(self, now: float | None = None) -> CredentialSet:
        """The set to sign with now. Only the very first call in a process may fetch (see `start`)."""
        if self._started_in != os.getpid():
            self.start()
        credentials = self._current
        now = self._clock() if now is None else now
        if credentials is None or credentials.seconds_left(now) <= 0:
            reason = f" ({self.last_error})" if self.last_error else ""
            raise CredentialsUnavailable(f"No valid AWS credentials to sign download links with{reason}.")
        return credentials

    def start(self) -> None:
        """Fetch the first set (at process start: gunicorn's worker boot, a Celery worker) and keep it fresh.

        Safe to call again, and after a fork: the child gets its own refresh thread.
        """
        with self._start_lock:
            if self._started_in == os.getpid():
                return
            self._started_in = os.getpid()
            if self._current is None or self._clock() >= self.next_refresh:
                self.refresh()
            if self._current is not None and self._current.expires_at is None:
                return  # static keys: nothing to renew
            threading.Thread(target=self._keep_fresh, name="aws-credentials", daemon=True).start()

    def refresh(self) -> bool:
        """Fetch a new set now; on failure keep the current one and try again soon. True on success."""
        now = self._clock()
        try:
            fresh = self._fetch()
        except Exception as error:  # any provider failure: keep signing with what still works
            self.failures += 1
            self.last_error = str(error)
            self.next_refresh = now + self.retry_delay
            logger.error(
                "Could not renew the AWS credentials for download links (attempt %d): %s", self.failures, error
            )
            return False
        self._current, self.failures, self.last_error = fresh, 0, ""
        self.next_refresh = self._refresh_time(fresh, now)
        left = fresh.seconds_left(now)
        if left < self.ttl + self.grace:
            logger.error(
                "The AWS credentials just fetched expire in %d s, too soon to give links SIGNED_URL_TTL=%d s: "
                "raise the role's session duration or lower SIGNED_URL_TTL.",
                left,
                self.ttl,
            )
        return True

    def _refresh_time(self, credentials: CredentialSet, now: float) -> float:
        if credentials.expires_at is None:
            return math.inf
        lifetime = credentials.expires_at - now
        # A provider that hands back the same short-lived set (an instance role about to rotate)
        # is asked again after a pause, not in a busy loop.
        return max(credentials.expires_at - self.lead(lifetime), now + self.retry_delay)

    def _keep_fresh(self) -> None:
        while True:
            delay = self.next_refresh - self._clock()
            if delay > 0:
                time.sleep(min(delay, 3600))  # the renewal schedule (checked again at least hourly)
            if self._clock() >= self.next_refresh:
                self.refresh()

    def status(self, now: float | None = None) -> dict:
        """For /readyz and /metrics: seconds left on the set in use, and consecutive failed fetches."""
        if self._started_in != os.getpid():
            self.start()  # a process that skipped `start` (runserver, tests): the first fetch happens here
        now = self._clock() if now is None else now
        left = self._current.seconds_left(now) if self._current else 0.0
        return {"seconds_left": left, "failures": self.failures, "last_error": self.last_error}

    def can_sign(self, now: float | None = None) -> bool:
        return self.status(now)["seconds_left"] > 0

    def problem(self, now: float | None = None) -> str | None:
        """What keeps links from their promised lifetime, or None."""
        status = self.status(now)
        if status["seconds_left"] >= self.ttl:
            return None
        if status["seconds_left"] <= 0:
            return f"no valid AWS credentials ({status['last_error'] or 'none fetched yet'})"
        return (
            f"the AWS credentials expire in {int(status['seconds_left'])} s, less than SIGNED_URL_TTL "
            f"({status['last_error'] or 'the provider hands out no longer-lived set'})"
        )
