"""AWS credentials for signing: their expiry read from botocore, renewal in the background, and
S3 links that never outlive the credentials that signed them."""

import threading
import time
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlsplit

import pytest
from botocore.credentials import Credentials, RefreshableCredentials

from releases import aws
from releases.signing import S3Signer
from releases.storage.s3 import S3Location

from .servers import wait_until

LOCATION = S3Location(origin="https://models.s3.eu-west-1.amazonaws.com", host="models.s3.eu-west-1.amazonaws.com",
                      prefix="/", region="eu-west-1")  # fmt: skip


class Provider:
    """A credential provider we control: each set it hands out lives `lifetime` seconds on `clock`."""

    def __init__(self, lifetime: float, clock=time.time):
        self.lifetime, self.clock = lifetime, clock
        self.issued: dict[str, float] = {}  # access key -> expiry
        self.threads: list[str] = []
        self.failing = False

    def __call__(self) -> aws.CredentialSet:
        self.threads.append(threading.current_thread().name)
        if self.failing:
            raise aws.CredentialsUnavailable("the metadata service does not answer")
        access_key = f"ASIA{len(self.issued):012d}"
        expires_at = self.clock() + self.lifetime
        self.issued[access_key] = expires_at
        return aws.CredentialSet(access_key, f"secret-{access_key}", token=f"token-{access_key}", expires_at=expires_at)


class Clock:
    def __init__(self, now: float = 1_800_000_000):
        self.now = now

    def __call__(self) -> float:
        return self.now


def signed_by(url: str) -> tuple[str, int, int]:
    """(access key, signed at, expires at) of a presigned URL."""
    query = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
    signed_at = int(datetime.strptime(query["X-Amz-Date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC).timestamp())
    return query["X-Amz-Credential"].split("/")[0], signed_at, signed_at + int(query["X-Amz-Expires"])


# --- the expiry of botocore's credentials ---------------------------------------------------


@pytest.mark.parametrize("lifetime", [1234, 900, 43200])
def test_the_expiry_of_refreshable_credentials_is_read_to_the_second(lifetime):
    expiry = (datetime.now(UTC) + timedelta(seconds=lifetime)).isoformat()
    metadata = {"access_key": "a", "secret_key": "b", "token": "c", "expiry_time": expiry}
    credentials = RefreshableCredentials.create_from_metadata(metadata, refresh_using=lambda: metadata, method="test")
    assert lifetime - 2 <= aws.seconds_left(credentials) <= lifetime


def test_static_credentials_never_expire():
    assert aws.seconds_left(Credentials("a", "b")) is None


@pytest.fixture
def assume_role_profile(moto_endpoint, tmp_path, monkeypatch):
    """botocore's default chain finds an assume-role profile whose role sessions last 900 s (moto's STS)."""
    config = tmp_path / "aws-config"
    config.write_text(
        "[profile signer]\nrole_arn = arn:aws:iam::123456789012:role/model-releases\n"
        "source_profile = base\nduration_seconds = 900\n"
        "[profile base]\naws_access_key_id = base-key\naws_secret_access_key = base-secret\n"
    )
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_PROFILE", "signer")
    monkeypatch.setenv("AWS_ENDPOINT_URL_STS", moto_endpoint)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    return 900


def test_the_default_chain_reads_an_assume_role_profiles_expiry_from_sts(assume_role_profile):
    first, second = aws.fetch_credentials(), aws.fetch_credentials()
    assert first.token and first.access_key.startswith("ASIA")
    assert assume_role_profile - 20 <= first.seconds_left(time.time()) <= assume_role_profile
    assert second.access_key != first.access_key  # a new set each time, not botocore's cached one


@pytest.mark.parametrize("ttl, error", [(600, "releases.E002"), (400, None)])
def test_check_deploy_refuses_a_ttl_the_credentials_cannot_cover(s3_store, assume_role_profile, settings, ttl, error):
    from django.core.checks import run_checks

    options = {k: v for k, v in settings.RELEASE_STORAGE["OPTIONS"].items() if k not in {"access_key", "secret_key"}}
    settings.RELEASE_STORAGE = {**settings.RELEASE_STORAGE, "OPTIONS": options}
    settings.SIGNED_URL_TTL = ttl
    found = [message for message in run_checks(include_deployment_checks=True) if message.id.startswith("releases.")]
    assert [message.id for message in found] == ([error] if error else [])
    if error:
        assert (
            "fewer than 2 x SIGNED_URL_TTL (1200 s)" in found[0].msg
            and "Lower SIGNED_URL_TTL to at most 44" in found[0].hint
        )


# --- renewal ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "ttl, lifetime, lead",
    [
        (3600, 6 * 3600, 2 * 3600 + 900),  # long-lived role: renewed while still covering a whole window
        (900, 3600, 1800),  # half the lifetime, more than ttl + grace
        (1800, 3600, 1800 + 900),  # just 2 x ttl: ttl + grace, the least that keeps the promise
        (3, 20, 7.5),
    ],
)
def test_the_next_set_is_fetched_early_enough(ttl, lifetime, lead):
    keeper = aws.CredentialKeeper(Provider(lifetime), ttl)
    assert keeper.lead(lifetime) == lead
    assert keeper.lead(lifetime) >= ttl + keeper.grace  # failed attempts still leave every link its ttl


def test_no_request_fetches_credentials_once_the_process_has_started():
    clock, provider = Clock(), None
    provider = Provider(lifetime=3600, clock=clock)
    keeper = aws.CredentialKeeper(provider, 600, clock=clock)
    keeper.start()
    assert provider.threads == [threading.current_thread().name]  # the one fetch at start
    for step in range(100):  # a request every 30 s for 50 minutes; the refresh thread is not due yet
        clock.now += 30 if step else 0
        if clock.now < keeper.next_refresh:
            keeper.current()
    assert len(provider.threads) == 1


def test_renewal_runs_in_the_background_thread():
    provider = Provider(lifetime=4)
    keeper = aws.CredentialKeeper(provider, 1)
    keeper.start()
    first = keeper.current()
    wait_until(lambda: keeper.current() != first, 10, interval=0.05, what="the background renewal")
    assert provider.threads[0] == threading.current_thread().name
    assert set(provider.threads[1:]) == {"aws-credentials"}


def test_a_failed_renewal_keeps_the_valid_set_and_says_so():
    clock = Clock()
    provider = Provider(lifetime=3600, clock=clock)
    keeper = aws.CredentialKeeper(provider, 600, clock=clock)
    keeper.start()
    held = keeper.current()
    provider.failing = True
    clock.now = keeper.next_refresh
    assert keeper.refresh() is False
    assert keeper.current() == held and keeper.failures == 1
    assert keeper.next_refresh == clock.now + keeper.retry_delay
    assert keeper.problem() is None  # still more than the ttl left: links keep their promise
    clock.now = held.expires_at - 599
    assert "expire in 599 s, less than SIGNED_URL_TTL (the metadata service does not answer)" in keeper.problem()
    clock.now = held.expires_at
    with pytest.raises(aws.CredentialsUnavailable, match="the metadata service does not answer"):
        keeper.current()
    provider.failing = False
    assert keeper.refresh() and keeper.current() != held and keeper.failures == 0


def test_a_provider_that_hands_back_the_same_short_set_is_not_asked_in_a_loop():
    clock = Clock()
    keeper = aws.CredentialKeeper(lambda: aws.CredentialSet("k", "s", "t", expires_at=clock.now + 60), 600, clock=clock)
    keeper.start()
    assert keeper.next_refresh == clock.now + keeper.retry_delay


def test_static_keys_start_no_thread():
    before = {thread.name for thread in threading.enumerate()}
    keeper = aws.CredentialKeeper(lambda: aws.CredentialSet("k", "s"), 600)
    keeper.start()
    assert keeper.next_refresh == float("inf") and keeper.problem() is None
    assert {thread.name for thread in threading.enumerate()} - before == set()


# --- links and their credentials ------------------------------------------------------------


@pytest.mark.parametrize("ttl, lifetime", [(3, 20), (600, 3600), (1800, 3600), (3600, 6 * 3600)])
def test_every_link_lives_at_least_the_ttl_and_never_beyond_its_credentials(ttl, lifetime):
    """A day of requests every few seconds, with the renewal thread's schedule replayed on a clock."""
    clock = Clock()
    provider = Provider(lifetime, clock=clock)
    keeper = aws.CredentialKeeper(provider, ttl, clock=clock)
    signer = S3Signer(ttl, LOCATION, keeper)
    keeper.start()
    step = max(ttl / 7, 1)
    end = clock.now + max(86400 if ttl > 60 else 600, 3 * lifetime)
    while clock.now < end:
        if clock.now >= keeper.next_refresh:
            keeper.refresh()  # what the background thread does at this moment
        link = signer.link("m/v1/model.pt", "model.pt", now=clock.now)
        access_key, signed_at, expires = signed_by(link.url)
        assert expires == int(link.expires_at.timestamp())
        assert expires - clock.now >= ttl, "a link with less than the promised lifetime"
        assert expires <= provider.issued[access_key], "a link that outlives its credentials"
        assert signed_at <= clock.now
        clock.now += step


def test_credentials_that_cover_the_window_give_the_full_window():
    clock = Clock(1_800_000_000 - 1_800_000_000 % 600 + 10)
    keeper = aws.CredentialKeeper(Provider(6 * 3600, clock=clock), 600, clock=clock)
    link = S3Signer(600, LOCATION, keeper).link("k", "k", now=clock.now)
    _, signed_at, expires = signed_by(link.url)
    assert (signed_at, expires) == (clock.now - 10, clock.now - 10 + 1200)


def test_a_renewed_set_is_not_served_links_signed_with_the_old_one():
    clock = Clock()
    provider = Provider(3600, clock=clock)
    keeper = aws.CredentialKeeper(provider, 600, clock=clock)
    signer = S3Signer(600, LOCATION, keeper)
    first = signer.link("k", "k", now=clock.now)
    keeper.refresh()
    second = signer.link("k", "k", now=clock.now)
    assert signed_by(first.url)[0] != signed_by(second.url)[0]
