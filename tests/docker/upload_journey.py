"""An admin's direct upload to the S3 store whose requests land on different web nodes, as behind
a load balancer without sticky sessions: two web containers of the production image on one
database, Redis and LocalStack S3 (which checks each presigned URL's signature and the signed
part checksum), and a worker on both queues that joins, hashes and records the file.

A maintainer signs in on one node; the upload starts there, its first part is signed there, its
second part is signed by the other node, and the other node completes it. The file is recorded
with its SHA-256, the version publishes, and its stable URL on either node redirects to the bytes
that were sent. Run by `make docker-test`, after journey.py.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import http.cookies
import json
import re
import secrets
import urllib.error
import urllib.parse
import urllib.request

import psycopg
import pytest

from ..servers import free_port, wait_until
from .roles import IMAGE, NO_PROXY, NO_REDIRECT, QUEUES, Container, Roles, services_env

MiB = 1024 * 1024
WEIGHTS = secrets.token_bytes(16 * MiB + 4099)  # two parts at the site's part size (16 MiB)
PATH = "weights/model.safetensors"
PASSWORD = secrets.token_urlsafe(18)


@pytest.fixture(scope="module")
def nodes(tmp_path_factory, request, database_url, redis_url, s3_endpoint):
    """migrate, a maintainer, a draft `upload-tts v1` with one small file, two web nodes, a worker."""
    ports = [free_port(), free_port()]
    env = services_env(f"http://localhost:{ports[0]}", database_url, redis_url, s3_endpoint)
    env.update(CDN_BACKEND="none")  # no cache in front: each request goes to the node it names
    roles = Roles(IMAGE, env, tmp_path_factory.mktemp("upload-roles"))
    release = tmp_path_factory.mktemp("draft")
    release.chmod(0o755)
    (release / "config.yaml").write_bytes(b"sample_rate: 24000\n")
    (release / "config.yaml").chmod(0o644)
    try:
        roles.run("migrate")
        roles.run(
            "createsuperuser", "--noinput", "--username", "maintainer", "--email", "maintainer@example.org",
            env={"DJANGO_SUPERUSER_PASSWORD": PASSWORD},
        )  # fmt: skip
        roles.run(
            "publish_release", "upload-tts", "v1", "--draft", "/release/config.yaml", mounts=(f"{release}:/release:ro",)
        )
        webs = roles.start("web", count=2, ports=ports)
        for web in webs:
            web.wait_healthy()
        roles.start("worker", "-Q", QUEUES, "--concurrency", "1")
        yield webs
    finally:
        roles.remove_all(show_logs=bool(request.session.testsfailed))


class Maintainer:
    """A signed-in admin user as a browser is one: session and CSRF cookies, and the CSRF header
    on every unsafe request, sent to whichever node each call names."""

    def __init__(self):
        self.cookies: dict[str, str] = {}

    def send(self, node: Container, method: str, path: str, body: bytes = b"", **headers) -> tuple[int, dict, bytes]:
        headers = {"Host": "localhost", **headers}
        if self.cookies:
            headers["Cookie"] = "; ".join(f"{name}={value}" for name, value in self.cookies.items())
        if method not in ("GET", "HEAD") and "csrftoken" in self.cookies:
            headers["X-CSRFToken"] = self.cookies["csrftoken"]
        connection = http.client.HTTPConnection("127.0.0.1", node.port, timeout=60)
        try:
            connection.request(method, path, body=body, headers=headers)
            response = connection.getresponse()
            for line in (
                response.headers.get_all("Set-Cookie") or ()
            ):  # Secure cookies: kept here as a browser on TLS would
                for name, morsel in http.cookies.SimpleCookie(line).items():
                    self.cookies[name] = morsel.value
            return response.status, dict(response.headers), response.read()
        finally:
            connection.close()

    def sign_in(self, node: Container) -> None:
        status, _, page = self.send(node, "GET", "/admin/login/")
        token = re.search(rb'name="csrfmiddlewaretoken" value="([^"]+)"', page)
        assert status == 200 and token, page[:500]
        form = {"username": "maintainer", "password": PASSWORD, "csrfmiddlewaretoken": token.group(1).decode()}
        status, headers, page = self.send(
            node, "POST", "/admin/login/?next=/admin/", urllib.parse.urlencode(form).encode(),
            **{"Content-Type": "application/x-www-form-urlencoded"},
        )  # fmt: skip
        assert (status, headers.get("Location")) == (302, "/admin/"), page[:500]

    def post(self, node: Container, path: str, payload: dict) -> dict:
        status, _, body = self.send(
            node, "POST", path, json.dumps(payload).encode(), **{"Content-Type": "application/json"}
        )
        assert status == 200, f"{node.name} POST {path}: {status} {body[:500]!r}"
        return json.loads(body)

    def get(self, node: Container, path: str) -> dict:
        status, _, body = self.send(node, "GET", path)
        assert status == 200, f"{node.name} GET {path}: {status} {body[:500]!r}"
        return json.loads(body)


def checksum(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def put_part(target: dict, body: bytes) -> int:
    """PUT a part where the node said (LocalStack), with the headers it signed."""
    assert target["method"] == "PUT" and target["url"].startswith("http"), target  # storage, not the site
    headers = {**target["headers"], "Content-Type": "application/octet-stream"}
    request = urllib.request.Request(target["url"], data=body, method="PUT", headers=headers)
    try:
        with NO_PROXY.open(request, timeout=60) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def draft_id(database_url: str) -> int:
    with psycopg.connect(database_url) as connection:
        query = "SELECT v.id FROM releases_version v JOIN releases_mlmodel m ON m.id = v.model_id WHERE m.slug = %s"
        (row,) = connection.execute(query, ("upload-tts",)).fetchall()
    return row[0]


def test_an_admin_upload_whose_requests_land_on_different_web_nodes_completes(nodes, database_url):
    first, second = nodes
    maintainer = Maintainer()
    maintainer.sign_in(first)
    expected = hashlib.sha256(WEIGHTS).hexdigest()
    start = f"/admin/releases/version/{draft_id(database_url)}/upload/start/"
    upload = maintainer.post(first, start, {"path": PATH, "size": len(WEIGHTS), "sha256": expected})
    assert (upload["part_count"], upload["state"]) == (2, "uploading"), upload
    size = upload["part_size"]
    parts = {1: WEIGHTS[:size], 2: WEIGHTS[size:]}
    for node, number in ((first, 1), (second, 2)):  # the session and the upload are the database's
        target = maintainer.post(node, f"{upload['links']['sign']}{number}/sign/", {"sha256": checksum(parts[number])})
        assert put_part(target, parts[number]) == 200, f"part {number}, signed by {node.name}, refused"
    listed = {"parts": [{"number": n, "sha256": checksum(part)} for n, part in parts.items()]}
    assert maintainer.post(second, upload["links"]["complete"], listed)["state"] in ("hashing", "done")

    def settled() -> dict | None:
        seen = maintainer.get(first, upload["links"]["status"])
        return seen if seen["state"] != "hashing" else None

    done = wait_until(settled, 120, interval=0.5, what="the worker to join, hash and record the upload")
    assert done["state"] == "done", done
    assert done["file"] == {"path": PATH, "size": len(WEIGHTS), "sha256": expected}

    first.exec("python", "manage.py", "release_status", "upload-tts", "v1", "publish")
    for node in (first, second):
        with pytest.raises(urllib.error.HTTPError) as redirect:
            stable = urllib.request.Request(f"{node.url}/models/upload-tts/v1/{PATH}", headers={"Host": "localhost"})
            NO_REDIRECT.open(stable, timeout=30)
        assert redirect.value.code == 302 and redirect.value.headers["X-Artifact-SHA256"] == expected, node.name
        with NO_PROXY.open(redirect.value.headers["Location"], timeout=60) as stored:
            assert hashlib.sha256(stored.read()).hexdigest() == expected
