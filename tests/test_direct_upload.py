"""The admin's direct uploads in parts (services/browser_uploads.py, admin_uploads.py), through the
JSON views a page uses: on the local store (parts come to the site), on moto, and on LocalStack's S3,
which checks each presigned URL's signature and expiry, and the signed part checksum."""

import base64
import hashlib
import io
import os
import time
import urllib.error
import urllib.request
from datetime import timedelta
from urllib.parse import urlsplit

import pytest
from django.contrib.auth.models import Permission
from django.urls import reverse

from releases import services, upload_tasks
from releases.models import BrowserUpload, File
from releases.services import browser_uploads
from releases.storage import MissingObject

from .factories import VersionFactory

pytestmark = pytest.mark.django_db(transaction=True)

MiB = 1024 * 1024


@pytest.fixture
def small_parts(monkeypatch):
    monkeypatch.setattr(browser_uploads, "PART_SIZE", 5 * MiB)  # S3's smallest: a 12 MiB file has 3


@pytest.fixture
def draft():
    return VersionFactory(model__slug="tts", version="v2")


@pytest.fixture
def weights():
    return os.urandom(12 * MiB + 123)


def checksum(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


class Page:
    """What upload.js does, step by step, through the admin's JSON views."""

    def __init__(self, client, version):
        self.client, self.version = client, version

    def post(self, url, body):
        return self.client.post(url, body, content_type="application/json")

    def start(self, data: bytes, path="model.safetensors", sha256=""):
        url = reverse("admin:releases_version_upload_start", args=[self.version.pk])
        return self.post(url, {"path": path, "size": len(data), "sha256": sha256})

    def sign(self, upload: dict, number: int, sha256: str):
        return self.post(f"{upload['links']['sign']}{number}/sign/", {"sha256": sha256})

    def put(self, target: dict, body: bytes) -> int:
        """PUT a part where the site said, with its headers: S3 over HTTP, the site through its client."""
        if target["url"].startswith("/"):
            headers = {f"HTTP_{name.upper().replace('-', '_')}": value for name, value in target["headers"].items()}
            return self.client.put(target["url"], body, content_type="application/octet-stream", **headers).status_code
        # urllib would call the body a form (moto then refuses it); a browser sends a file's slice as bytes
        headers = {**target["headers"], "Content-Type": "application/octet-stream"}
        request = urllib.request.Request(target["url"], data=body, method="PUT", headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status
        except urllib.error.HTTPError as error:
            return error.code

    def parts(self, upload: dict, data: bytes):
        size = upload["part_size"]
        return [(n + 1, data[offset : offset + size]) for n, offset in enumerate(range(0, len(data), size))]

    def send(self, upload: dict, data: bytes, only=None):
        for number, part in self.parts(upload, data):
            if only is None or number in only:
                target = self.sign(upload, number, checksum(part)).json()
                assert self.put(target, part) == 200, f"part {number} refused"

    def match(self, upload: dict, data: bytes, sha256=""):
        """What the page says of a found upload: its own checksums of the parts storage holds."""
        local = dict(self.parts(upload, data))
        parts = [{"number": p["number"], "sha256": checksum(local[p["number"]])} for p in upload["stored"]]
        return self.post(upload["links"]["match"], {"parts": parts, "sha256": sha256})

    def complete(self, upload: dict, data: bytes):
        parts = [{"number": number, "sha256": checksum(part)} for number, part in self.parts(upload, data)]
        return self.post(upload["links"]["complete"], {"parts": parts})


@pytest.fixture
def page(admin_client, draft, small_parts):
    return Page(admin_client, draft)


@pytest.fixture(params=["local", "moto", "localstack"])
def store(request):
    """Each test once per store: the site receiving parts, moto, and LocalStack checking signatures."""
    return request.getfixturevalue(
        {"local": "local_store", "moto": "s3_store", "localstack": "localstack_store"}[request.param]
    )


def stored_bytes(store, key: str) -> bytes:
    return b"".join(store.iter_bytes(key))


def test_a_file_uploaded_in_parts_is_recorded_with_its_size_and_sha256(page, store, draft, weights):
    upload = page.start(weights).json()
    assert (upload["part_count"], upload["state"], upload["stored"]) == (3, "uploading", [])
    page.send(upload, weights)
    done = page.complete(upload, weights).json()
    assert done["state"] == "done", done
    file = File.objects.get(version=draft)
    assert (file.path, file.key, file.size) == ("model.safetensors", "tts/v2/model.safetensors", len(weights))
    assert file.sha256 == hashlib.sha256(weights).hexdigest() == done["file"]["sha256"]
    assert stored_bytes(store, file.key) == weights
    services.publish_version(draft)  # the file is complete and present: the version publishes


def test_a_reloaded_page_resumes_from_the_parts_already_stored(page, store, draft, weights):
    upload = page.start(weights).json()
    page.send(upload, weights, only={1, 3})
    again = page.start(weights).json()  # the page reloaded: the same file chosen again
    assert again["id"] == upload["id"]
    first, _, third = page.parts(upload, weights)
    assert again["stored"] == [
        {"number": 1, "size": len(first[1]), "sha256": checksum(first[1])},
        {"number": 3, "size": len(third[1]), "sha256": checksum(third[1])},
    ]
    refused = page.complete(again, weights)
    assert refused.status_code == 400 and "Part 2 of model.safetensors is not stored yet" in refused.json()["error"]
    page.send(again, weights, only={2})
    assert page.complete(again, weights).json()["state"] == "done"
    assert stored_bytes(store, "tts/v2/model.safetensors") == weights


def test_another_file_at_the_same_path_starts_over(page, store, draft, weights):
    upload = page.start(weights).json()
    page.send(upload, weights, only={1})
    other = page.start(weights + b"!").json()
    assert other["id"] != upload["id"] and other["stored"] == []
    assert BrowserUpload.objects.get(pk=upload["id"]).state == "aborted"


def test_the_same_file_chosen_again_without_its_expected_sha256_is_recognised_by_its_stored_parts(
    page, store, draft, weights
):
    expected = hashlib.sha256(weights).hexdigest()
    upload = page.start(weights, sha256=expected).json()
    page.send(upload, weights, only={1, 3})
    again = page.start(weights).json()  # reloaded, the same file chosen, the checksum not typed again
    assert again["id"] == upload["id"] and [p["number"] for p in again["stored"]] == [1, 3]
    matched = page.match(again, weights).json()
    assert (matched["id"], matched["kept"], len(matched["stored"])) == (upload["id"], True, 2)
    page.send(matched, weights, only={2})  # only the missing part
    assert page.complete(matched, weights).json()["state"] == "done"
    assert BrowserUpload.objects.get(pk=upload["id"]).expected_sha256 == expected  # still checked against it
    assert stored_bytes(store, "tts/v2/model.safetensors") == weights


def test_another_file_of_the_same_size_is_told_by_its_stored_parts_and_starts_over(page, store, draft, weights):
    upload = page.start(weights).json()
    page.send(upload, weights, only={1, 2})
    other = weights[:-1] + bytes([weights[-1] ^ 1])  # the same size; its parts 1 and 2 are the same bytes
    assert page.match(page.start(other).json(), other).json()["kept"] is True
    changed = bytes([weights[0] ^ 1]) + weights[1:]  # part 1 differs
    found = page.start(changed).json()
    assert found["id"] == upload["id"]
    replaced = page.match(found, changed).json()
    assert (replaced["kept"], replaced["stored"]) == (False, [])
    assert replaced["id"] != upload["id"]
    old = BrowserUpload.objects.get(pk=upload["id"])
    assert (old.state, old.detail) == ("aborted", "another file was chosen for this path (its part 1 has other bytes)")
    page.send(replaced, changed)
    assert page.complete(replaced, changed).json()["state"] == "done"
    assert stored_bytes(store, "tts/v2/model.safetensors") == changed


def test_an_expected_sha256_other_than_the_one_begun_with_starts_over(page, draft, local_store, weights):
    upload = page.start(weights, sha256="a" * 64).json()
    other = page.start(weights, sha256="b" * 64).json()
    assert other["id"] != upload["id"] and BrowserUpload.objects.get(pk=upload["id"]).state == "aborted"


@pytest.mark.parametrize(
    "body, error",
    [
        ({"parts": []}, "Give the checksum of every stored part of model.safetensors; part 1 has none."),
        ({"parts": "1"}, "parts is a list of {number, sha256}."),
        ({"parts": [], "sha256": 5}, "sha256 (the expected SHA-256, if given) is a string."),
    ],
)
def test_a_match_without_the_stored_parts_checksums_is_a_400_and_keeps_the_upload(
    page, draft, local_store, weights, body, error
):
    upload = page.start(weights).json()
    page.send(upload, weights, only={1})
    answer = page.post(upload["links"]["match"], body)
    assert (answer.status_code, answer.json()) == (400, {"error": error})
    assert BrowserUpload.objects.get(pk=upload["id"]).state == "uploading"


@pytest.mark.parametrize("kind", ["local", "localstack"])
def test_a_part_url_used_after_it_expired_is_refused(page, settings, request, kind, weights):
    store = request.getfixturevalue("local_store" if kind == "local" else "localstack_store")
    settings.UPLOAD_PART_URL_SECONDS = 1
    upload = page.start(weights).json()
    number, part = page.parts(upload, weights)[0]
    target = page.sign(upload, number, checksum(part)).json()
    time.sleep(2.5)  # the clock is the condition: both stores count whole seconds from signing
    assert page.put(target, part) == 403
    assert store.stored_parts(upload_key(upload), BrowserUpload.objects.get().storage_upload_id) == {}
    # A fresh link with the default lifetime: one second could lapse again before the PUT on a busy machine.
    settings.UPLOAD_PART_URL_SECONDS = 900
    fresh = page.sign(upload, number, checksum(part)).json()  # what the page does on a 403
    assert page.put(fresh, part) == 200


def upload_key(upload: dict) -> str:
    return BrowserUpload.objects.get(pk=upload["id"]).key


@pytest.mark.parametrize("kind", ["local", "localstack"])
def test_a_part_with_other_bytes_than_its_checksum_is_refused(page, request, kind, weights):
    store = request.getfixturevalue("local_store" if kind == "local" else "localstack_store")
    upload = page.start(weights).json()
    number, part = page.parts(upload, weights)[0]
    target = page.sign(upload, number, checksum(part)).json()
    assert page.put(target, b"x" + part[1:]) == 400
    assert store.stored_parts(upload_key(upload), BrowserUpload.objects.get().storage_upload_id) == {}


def test_a_user_without_permission_to_add_files_is_refused(client, django_user_model, draft, local_store, weights):
    staff = django_user_model.objects.create_user("reader", password="pw", is_staff=True)
    staff.user_permissions.add(Permission.objects.get(codename="view_version"))
    owner = django_user_model.objects.create_superuser("owner", "o@example.org", "pw")
    upload = browser_uploads.start_upload(draft, "model.safetensors", len(weights), user=owner)
    client.force_login(staff)
    page = Page(client, draft)
    links = {
        "start": reverse("admin:releases_version_upload_start", args=[draft.pk]),
        "sign": reverse("admin:releases_version_upload_sign", args=[upload.pk, 1]),
        "complete": reverse("admin:releases_version_upload_complete", args=[upload.pk]),
        "abort": reverse("admin:releases_version_upload_abort", args=[upload.pk]),
    }
    for name, url in links.items():
        response = page.post(url, {"path": "x.bin", "size": 1, "sha256": checksum(b"x"), "parts": []})
        assert response.status_code == 403, name
        assert response.json() == {"error": "You do not have permission to add files."}
    status = client.get(reverse("admin:releases_version_upload_status", args=[upload.pk]))
    assert status.status_code == 403
    assert client.get(reverse("admin:releases_version_upload", args=[draft.pk])).status_code == 404
    client.logout()  # and someone not logged in is sent to the login page
    response = page.post(links["sign"], {"sha256": checksum(b"x")})
    assert response.status_code == 302 and "/admin/login/" in response["Location"]
    assert BrowserUpload.objects.get().part_checksums == {}


def test_a_file_whose_sha256_is_not_the_expected_one_is_refused_and_nothing_recorded(page, store, draft, weights):
    upload = page.start(weights, sha256="0" * 64).json()
    page.send(upload, weights)
    outcome = page.complete(upload, weights).json()
    assert outcome["state"] == "failed"
    assert f"has SHA-256 {hashlib.sha256(weights).hexdigest()}, not the expected {'0' * 64}" in outcome["detail"]
    assert not File.objects.exists()
    assert store.stat("tts/v2/model.safetensors") is None


def test_parts_the_page_did_not_hash_are_refused_at_completion(page, store, draft, weights):
    upload = page.start(weights).json()
    page.send(upload, weights)
    parts = [{"number": n, "sha256": checksum(part)} for n, part in page.parts(upload, weights)]
    parts[1]["sha256"] = checksum(b"something else")
    refused = page.post(upload["links"]["complete"], {"parts": parts})
    assert refused.status_code == 400
    assert "Part 2 in storage has other bytes than part 2 of the chosen file" in refused.json()["error"]
    assert not File.objects.exists() and BrowserUpload.objects.get().state == "uploading"


def test_a_version_with_an_unfinished_upload_cannot_be_published(page, draft, local_store, weights):
    services.add_file(draft, "config.json", io.BytesIO(b"{}"))
    page.start(weights)
    with pytest.raises(services.ReleaseError, match="unfinished upload of model.safetensors"):
        services.publish_version(draft)


@pytest.mark.parametrize(
    "body, error",
    [
        ({"path": "../x", "size": 10}, "path"),
        ({"path": "a.bin", "size": 0}, "1 byte to 5 TiB"),
        ({"path": "a.bin", "size": "10"}, "size is a whole number"),
        ({"path": "a.bin", "size": 10, "sha256": "abc"}, "64 hexadecimal digits"),
    ],
)
def test_bad_requests_get_a_clear_error_and_start_nothing(page, draft, local_store, body, error):
    response = page.post(reverse("admin:releases_version_upload_start", args=[draft.pk]), body)
    assert response.status_code == 400 and error in response.json()["error"]
    assert not BrowserUpload.objects.exists()


def test_an_empty_file_is_stored_in_one_request_once_and_refused_where_another_file_is(page, store, draft):
    url = reverse("admin:releases_version_upload_empty", args=[draft.pk])
    empty = hashlib.sha256(b"").hexdigest()
    for _ in range(2):  # the same folder chosen again: the empty file held already refuses nothing
        response = page.post(url, {"path": "samples/.gitkeep"})
        assert response.status_code == 200
        assert response.json() == {"path": "samples/.gitkeep", "size": 0, "sha256": empty}
    file = File.objects.get()
    assert (file.size, file.sha256, stored_bytes(store, file.key)) == (0, empty, b"")
    wrong = page.post(url, {"path": "other/.gitkeep", "sha256": hashlib.sha256(b"x").hexdigest()})
    assert wrong.status_code == 400 and f"its SHA-256 is {empty}" in wrong.json()["error"]
    services.add_file(draft, "config.json", io.BytesIO(b"{}"))
    taken = page.post(url, {"path": "config.json"})
    assert taken.status_code == 400 and "already has a file config.json" in taken.json()["error"]
    assert File.objects.count() == 2 and not BrowserUpload.objects.exists()


@pytest.mark.parametrize("kind", ["local", "localstack"])  # moto reports no real start time
def test_abandoned_admin_uploads_are_aborted_by_the_beat_job(page, request, settings, kind, weights):
    store = request.getfixturevalue("local_store" if kind == "local" else "localstack_store")
    upload = page.start(weights).json()
    page.send(upload, weights, only={1})
    row = BrowserUpload.objects.get()
    assert upload_tasks.abort_stale_uploads.delay().get() == {"aborted": 0, "admin_uploads": 0}  # still young
    BrowserUpload.objects.update(updated_at=row.updated_at - timedelta(hours=25))
    outcome = upload_tasks.abort_stale_uploads.delay().get()
    assert outcome["admin_uploads"] == 1
    row.refresh_from_db()
    assert row.state == "aborted" and "abandoned" in row.detail
    with pytest.raises(MissingObject):
        store.stored_parts(row.key, row.storage_upload_id)  # its parts are gone from storage
    refused = page.sign(upload, 2, checksum(b"x"))
    assert refused.status_code == 400 and "aborted" in refused.json()["error"]


def test_the_local_store_drops_part_folders_nobody_touched_for_the_age_limit(local_store):
    young, old = local_store.start_parts_upload("m/a", ""), local_store.start_parts_upload("m/b", "")
    os.utime(local_store.parts.folder(old), (time.time() - 3600,) * 2)
    assert local_store.abort_stale_uploads(timedelta(minutes=30)) == 1
    assert local_store.stored_parts("m/a", young) == {}
    with pytest.raises(MissingObject):
        local_store.stored_parts("m/b", old)


def preflight(endpoint: str, bucket: str, origin: str) -> tuple[int, str | None]:
    """What a browser asks the bucket before PUTting a part from a page at ``origin``."""
    request = urllib.request.Request(
        f"{endpoint}/{bucket}/tts/v2/model.safetensors?uploadId=x&partNumber=1",
        method="OPTIONS",
        headers={"Origin": origin, "Access-Control-Request-Method": "PUT",
                 "Access-Control-Request-Headers": "x-amz-checksum-sha256"},
    )  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers.get("Access-Control-Allow-Origin")
    except urllib.error.HTTPError as error:
        return error.code, error.headers.get("Access-Control-Allow-Origin")


def test_apply_bucket_cors_lets_the_site_s_pages_put_parts_and_no_one_else(localstack_store, settings, capsys):
    from django.core.management import call_command

    endpoint, bucket = localstack_store.storage.endpoint_url, localstack_store.bucket
    site = "https://models.example.org"
    assert preflight(endpoint, bucket, site)[0] == 403  # LocalStack enforces the bucket's CORS rules
    settings.SITE_URL = site
    call_command("apply_bucket_cors")
    assert "CORS rule set: PUT from https://models.example.org." in capsys.readouterr().out
    assert preflight(endpoint, bucket, site) == (200, site)
    assert preflight(endpoint, bucket, "https://elsewhere.example.com")[0] == 403


def test_apply_bucket_cors_keeps_the_bucket_s_other_rules(s3_store):
    from django.core.management import call_command

    theirs = {"ID": "downloads", "AllowedMethods": ["GET"], "AllowedOrigins": ["*"]}
    s3_store.client.put_bucket_cors(Bucket=s3_store.bucket, CORSConfiguration={"CORSRules": [theirs]})
    call_command("apply_bucket_cors", origins=["https://a.example.org"])
    call_command("apply_bucket_cors", origins=["https://b.example.org"])  # ours replaced, not added twice
    rules = s3_store.client.get_bucket_cors(Bucket=s3_store.bucket)["CORSRules"]
    assert [(rule["ID"], rule["AllowedOrigins"]) for rule in rules] == [
        ("downloads", ["*"]),
        ("model-releases-direct-upload", ["https://b.example.org"]),
    ]


@pytest.mark.parametrize(
    "options, error",
    [
        ({"origins": ["https://models.example.org/admin/"]}, "is not an origin"),
        ({}, "Name the site's origin"),
    ],
)
def test_apply_bucket_cors_refuses_what_is_not_an_origin(s3_store, settings, options, error):
    from django.core.management import CommandError, call_command

    settings.SITE_URL = ""
    with pytest.raises(CommandError, match=error):
        call_command("apply_bucket_cors", **options)
    with pytest.raises(Exception, match="NoSuchCORSConfiguration"):
        s3_store.client.get_bucket_cors(Bucket=s3_store.bucket)


def test_the_local_store_needs_no_cors_rule(local_store):
    from django.core.management import CommandError, call_command

    with pytest.raises(CommandError, match="receives parts through the site; it needs no CORS rule"):
        call_command("apply_bucket_cors", origins=["https://models.example.org"])


def test_the_upload_page_may_connect_to_the_bucket_and_nowhere_else(page, admin_client, draft, s3_store, weights):
    response = admin_client.get(reverse("admin:releases_version_upload", args=[draft.pk]))
    assert response.status_code == 200
    policy = response["Content-Security-Policy"]
    upload = page.start(weights).json()
    part_url = urlsplit(page.sign(upload, 1, checksum(weights[: upload["part_size"]])).json()["url"])
    assert policy.count("connect-src") == 1 and policy.endswith(
        f"; connect-src 'self' {part_url.scheme}://{part_url.netloc}"
    )
    assert "default-src 'self'" in policy


def test_the_site_s_part_url_takes_only_its_own_part_and_checksum(page, admin_client, local_store, weights):
    upload = page.start(weights).json()
    (one, first), (two, second) = page.parts(upload, weights)[:2]
    target = page.sign(upload, one, checksum(first)).json()
    for_part_two = {**target, "url": target["url"].replace(f"/parts/{one}/", f"/parts/{two}/")}
    assert page.put(for_part_two, second) == 403  # a token is for one part
    other_checksum = {**target, "headers": {"x-amz-checksum-sha256": checksum(second)}}
    assert page.put(other_checksum, second[: len(first)]) == 403  # and for one checksum
    assert page.put({**target, "url": target["url"].split("?")[0]}, first) == 403  # and needed
    assert local_store.stored_parts("", BrowserUpload.objects.get().storage_upload_id) == {}
    assert page.put(target, first) == 200


@pytest.mark.parametrize(
    "permissions, refusal",
    [((), 403), (("add_file", "view_version"), 404), (("change_version",), 403)],  # 404: someone else's upload
)
def test_the_site_s_part_url_refuses_a_user_without_permission(
    page, client, django_user_model, draft, weights, local_store, permissions, refusal
):
    upload = page.start(weights).json()
    number, part = page.parts(upload, weights)[0]
    target = page.sign(upload, number, checksum(part)).json()
    staff = django_user_model.objects.create_user("reader", password="pw", is_staff=True)
    staff.user_permissions.add(*Permission.objects.filter(codename__in=permissions))
    client.force_login(staff)
    assert Page(client, draft).put(target, part) == refusal  # a valid part URL is not a permission
    assert BrowserUpload.objects.get().part_checksums == {"1": checksum(part)}
    assert local_store.stored_parts("", BrowserUpload.objects.get().storage_upload_id) == {}


@pytest.mark.parametrize(
    "route, body, error",
    [
        ("sign", {"sha256": 12}, "sha256 is the part's base64 SHA-256"),
        ("sign", {"sha256": "bm90IGEgc2hhMjU2"}, "is not a base64 SHA-256"),
        ("sign", ["not", "an", "object"], "not a JSON object"),
        ("complete", {}, "parts is a list"),
        ("complete", {"parts": [{"number": "1", "sha256": "x"}]}, "A part number is a whole number"),
        ("complete", {"parts": [{"number": 1.0, "sha256": "x"}]}, "A part number is a whole number"),
        ("start", {"path": None, "size": 10}, "path (and sha256, if given) are strings"),
    ],
)
def test_bad_part_requests_get_a_clear_error(page, draft, local_store, weights, route, body, error):
    upload = page.start(weights).json()
    url = {"sign": f"{upload['links']['sign']}1/sign/", "complete": upload["links"]["complete"],
           "start": reverse("admin:releases_version_upload_start", args=[draft.pk])}[route]  # fmt: skip
    response = page.post(url, body)
    assert response.status_code == 400 and error in response.json()["error"]
    assert BrowserUpload.objects.get().state == "uploading"


def test_a_check_delivered_twice_at_once_records_the_file_once_and_keeps_its_object(
    page, store, draft, weights, monkeypatch
):
    from releases.services import upload_outcomes

    record = upload_outcomes._record

    def another_delivery_records_first(upload, sha256):
        monkeypatch.setattr(upload_outcomes, "_record", record)
        assert upload_outcomes.finish_upload(upload.pk).state == "done"  # the other delivery, overlapping
        return record(upload, sha256)

    monkeypatch.setattr(upload_outcomes, "_record", another_delivery_records_first)
    upload = page.start(weights).json()
    page.send(upload, weights)
    assert page.complete(upload, weights).json()["state"] == "done"
    assert File.objects.count() == 1 and stored_bytes(store, "tts/v2/model.safetensors") == weights


def test_a_file_added_otherwise_cannot_take_the_path_of_an_upload_in_progress(page, draft, local_store, weights):
    page.start(weights)
    with pytest.raises(services.ReleaseError, match="model.safetensors is being uploaded from the admin"):
        services.add_file(draft, "model.safetensors", io.BytesIO(b"other bytes"))
    assert not File.objects.exists()


def test_an_upload_being_checked_cannot_be_aborted_until_its_check_is_lost(page, store, draft, weights):
    from releases.services.upload_outcomes import LOST_TASK_AFTER, move

    upload = page.start(weights).json()
    page.send(upload, weights)
    row = BrowserUpload.objects.get()
    move(row, "uploading", "hashing")  # completed, its task not run yet
    refused = page.post(upload["links"]["abort"], {})
    assert refused.status_code == 400 and "cannot be aborted now" in refused.json()["error"]
    BrowserUpload.objects.update(updated_at=row.updated_at - LOST_TASK_AFTER - timedelta(minutes=1))
    assert page.post(upload["links"]["abort"], {}).json()["state"] == "aborted"
    assert store.stat(row.key) is None and not File.objects.exists()


def test_the_stale_upload_sweep_keeps_the_admin_uploads_still_in_progress(page, localstack_store, weights):
    upload = page.start(weights).json()
    page.send(upload, weights, only={1})
    row = BrowserUpload.objects.get()
    assert localstack_store.abort_stale_uploads(timedelta(0), keep={row.storage_upload_id}) == 0
    assert list(localstack_store.stored_parts(row.key, row.storage_upload_id)) == [1]


# --- the version's permissions, for staff with narrow rights ---------------------------------------


@pytest.fixture
def staff_with(django_user_model):
    """A staff member holding only the named permissions."""

    def make(name: str, *codenames: str):
        user = django_user_model.objects.create_user(name, password="pw", is_staff=True)
        user.user_permissions.add(*Permission.objects.filter(codename__in=codenames))
        return django_user_model.objects.get(pk=user.pk)  # a fresh permission cache

    return make


def upload_links(upload) -> dict:
    return {
        "status": reverse("admin:releases_version_upload_status", args=[upload.pk]),
        "sign": reverse("admin:releases_version_upload_sign", args=[upload.pk, 1]),
        "complete": reverse("admin:releases_version_upload_complete", args=[upload.pk]),
        "abort": reverse("admin:releases_version_upload_abort", args=[upload.pk]),
    }


def act(client, name: str, url: str, weights: bytes):
    if name == "status":
        return client.get(url)
    return client.post(url, {"path": "x.bin", "size": 1, "sha256": checksum(b"x"), "parts": []}, "application/json")


def test_staff_who_may_only_add_files_learn_nothing_about_a_draft(
    client, staff_with, django_user_model, draft, local_store, weights
):
    owner = django_user_model.objects.create_superuser("owner", "o@example.org", "pw")
    upload = browser_uploads.start_upload(draft, "secret-weights.safetensors", len(weights), user=owner)
    client.force_login(staff_with("adder", "add_file"))
    page = client.get(reverse("admin:releases_version_upload", args=[draft.pk]))
    assert page.status_code == 404 and b"tts" not in page.content
    start = Page(client, draft).start(weights)
    answers = {"start": start} | {name: act(client, name, url, weights) for name, url in upload_links(upload).items()}
    for name, response in answers.items():
        assert response.status_code == 404, name
        assert response["Content-Type"] == "application/json", name
        assert response.json()["error"] in {"There is no such version.", "There is no such upload."}, name
    assert BrowserUpload.objects.get().state == "uploading" and BrowserUpload.objects.get().part_checksums == {}
    assert BrowserUpload.objects.count() == 1


def test_staff_who_may_view_but_not_change_see_only_their_own_uploads_and_cannot_upload(
    client, staff_with, django_user_model, draft, local_store, weights
):
    viewer = staff_with("viewer", "add_file", "view_version")
    owner = django_user_model.objects.create_superuser("owner", "o@example.org", "pw")
    theirs = browser_uploads.start_upload(draft, "their-weights.bin", len(weights), user=owner)
    mine = browser_uploads.start_upload(draft, "my-weights.bin", len(weights), user=viewer)
    client.force_login(viewer)

    page = client.get(reverse("admin:releases_version_upload", args=[draft.pk]))
    assert page.status_code == 200
    assert b"my-weights.bin" in page.content and b"their-weights.bin" not in page.content
    refused = Page(client, draft).start(weights, path="new.bin")
    assert refused.status_code == 403
    assert refused.json() == {"error": "Uploading needs the permissions to add files and to change versions."}
    for name, url in upload_links(theirs).items():
        response = act(client, name, url, weights)
        assert response.status_code == 404 and response.json() == {"error": "There is no such upload."}, name
    assert BrowserUpload.objects.get(pk=theirs.pk).state == "uploading"

    own = upload_links(mine)
    assert client.get(own["status"]).json()["path"] == "my-weights.bin"
    assert act(client, "sign", own["sign"], weights).status_code == 403  # sending parts is uploading
    assert act(client, "abort", own["abort"], weights).json()["state"] == "aborted"
    assert BrowserUpload.objects.filter(path="new.bin").count() == 0


def test_staff_who_may_change_versions_see_and_abort_anyone_s_upload(
    client, staff_with, django_user_model, draft, local_store, weights
):
    owner = django_user_model.objects.create_superuser("owner", "o@example.org", "pw")
    upload = browser_uploads.start_upload(draft, "model.safetensors", len(weights), user=owner)
    client.force_login(staff_with("maintainer", "change_version"))
    links = upload_links(upload)
    assert client.get(links["status"]).json()["path"] == "model.safetensors"
    page = client.get(reverse("admin:releases_version_upload", args=[draft.pk]))
    assert page.status_code == 404  # the upload page is for adding files
    refused = act(client, "sign", links["sign"], weights)
    assert refused.status_code == 403 and refused.json() == {"error": "You do not have permission to add files."}
    assert act(client, "abort", links["abort"], weights).json()["state"] == "aborted"
    assert BrowserUpload.objects.get().state == "aborted"


def test_staff_who_may_add_files_and_change_versions_upload_and_finish(client, staff_with, draft, local_store, weights):
    client.force_login(staff_with("uploader", "add_file", "change_version"))
    page = Page(client, draft)
    upload = page.start(weights).json()
    page.send(upload, weights)
    assert page.complete(upload, weights).json()["state"] == "done"
    assert File.objects.get().sha256 == hashlib.sha256(weights).hexdigest()


DEEP = "[" * 100_000 + "]" * 100_000


@pytest.mark.parametrize(
    "route, body, error",
    [
        ("start", {"path": "weights-\ud800.bin", "size": 10}, "is not valid Unicode (it holds a lone surrogate)"),
        ("start", {"path": "\ud800", "size": 10}, "lone surrogate"),
        ("start", {"path": "ckpt:2024-01-01.yaml", "size": 10}, "must not contain :"),
        ("start", {"path": "weights/nul.txt", "size": 10}, "which Windows reserves for a device"),
        ("start", {"path": "name.", "size": 10}, "ending in a dot or a space"),
        ("start", DEEP, "The request nests too deeply to be read"),
        ("complete", DEEP, "The request nests too deeply to be read"),
        ("sign", DEEP, "The request nests too deeply to be read"),
        ("complete", '{"parts": ' + DEEP + "}", "The request nests too deeply to be read"),
    ],
)
def test_unreadable_paths_and_bodies_are_a_400_with_a_sentence(page, draft, local_store, weights, route, body, error):
    upload = page.start(weights).json()
    url = {"sign": f"{upload['links']['sign']}1/sign/", "complete": upload["links"]["complete"],
           "start": reverse("admin:releases_version_upload_start", args=[draft.pk])}[route]  # fmt: skip
    response = page.post(url, body)
    assert response.status_code == 400 and error in response.json()["error"]
    assert list(BrowserUpload.objects.values_list("path", "state")) == [("model.safetensors", "uploading")]
