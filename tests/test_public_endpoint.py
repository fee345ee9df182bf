"""A store that the site reaches at one address and its clients at another
(AWS_S3_PUBLIC_ENDPOINT_URL, as in docker/compose.yaml): download links and browser part uploads
are signed for the clients' address and work there, and none of the site's own requests go to it.

LocalStack is the store: it checks signatures, the signed host name included (not its port). The
clients' address is a counting proxy in front of it, named `localhost` where the site's address for
LocalStack is `127.0.0.1`; the proxy forwards each request unchanged.
"""

import base64
import hashlib
import urllib.error
import urllib.request
from collections import Counter

import pytest

from releases.storage import release_store

from .storage_servers import CountingProxy

pytestmark = pytest.mark.django_db


@pytest.fixture
def proxy(localstack_store):
    proxy = CountingProxy(localstack_store.storage.endpoint_url)
    yield proxy
    proxy.stop()


def public_url(proxy: CountingProxy) -> str:
    return f"http://localhost:{proxy.port}"


@pytest.fixture
def public(settings, proxy):
    """The release storage on LocalStack, with the proxy as its public endpoint."""
    settings.RELEASE_STORAGE = {
        "BACKEND": "s3",
        "OPTIONS": {**settings.RELEASE_STORAGE["OPTIONS"], "public_endpoint_url": public_url(proxy)},
    }
    return proxy


def status_of(request: urllib.request.Request | str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, b""


def test_download_links_are_signed_for_the_public_endpoint_and_work_there(client, publish, public):
    publish("m", "v1", {"model.pt": b"weights"})
    assert public.reset().requests == Counter()  # publishing used the site's own endpoint only
    link = client.get("/models/m/v1/model.pt")["Location"]
    assert link.startswith(public_url(public) + "/")
    assert status_of(link) == (200, b"weights")
    assert public.reset().requests == Counter({"GetObject": 1})


def test_a_link_signed_for_the_site_s_own_endpoint_is_refused_at_another_address(client, publish, proxy):
    """The store checks the Host a link was signed for: the test above could not pass with links
    signed for the site's address and merely sent elsewhere."""
    publish("m", "v1", {"model.pt": b"weights"})
    link = client.get("/models/m/v1/model.pt")["Location"]  # no public endpoint: the site's own
    own = release_store().storage.endpoint_url
    assert link.startswith(own + "/") and status_of(link) == (200, b"weights")
    assert status_of(link.replace(own, public_url(proxy), 1))[0] == 403


def test_browser_parts_are_signed_for_the_public_endpoint_and_stored_through_it(public):
    store, key, part = release_store(), "m/v1/big.bin", b"part one" * 1000
    upload_id = store.start_parts_upload(key, "application/octet-stream")
    sha256 = base64.b64encode(hashlib.sha256(part).digest()).decode()
    target = store.part_target(key, upload_id, 1, sha256, 600)
    assert target.url.startswith(public_url(public) + "/") and store.part_origin() == public_url(public)
    headers = {**target.headers, "Content-Type": "application/octet-stream"}
    assert status_of(urllib.request.Request(target.url, data=part, method="PUT", headers=headers))[0] == 200
    assert public.reset().requests == Counter({"PutPart": 1})  # starting the upload went to the site's endpoint
    assert store.stored_parts(key, upload_id)[1].size == len(part) and public.reset().requests == Counter()
