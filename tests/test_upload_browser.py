"""The admin's direct upload in Chromium (Playwright): a maintainer uploads a file of several parts,
the page is reloaded half way, the same file chosen again finishes from the stored parts, and the
version is published. Against the local store, moto's S3, and LocalStack's S3, which checks each
part's signature and checksum and enforces the bucket's CORS rule that `apply_bucket_cors` sets."""

import hashlib
import os
import re
from urllib.parse import parse_qs, urlsplit

import pytest
from django.core.management import call_command

from releases.models import File, Version
from releases.services import browser_uploads

from . import test_browser
from .factories import VersionFactory
from .test_browser import log_in_as_maintainer

pytestmark = pytest.mark.django_db(transaction=True)
browser_page = test_browser.browser_page  # the fixture: Chromium, as the other journeys drive it

MiB = 1024 * 1024
PARTS_HELD_BACK = re.compile(r"(partNumber=[345]&|/parts/[345]/\?token=)")  # S3's URLs, and the site's


def part_number(url: str) -> int:
    parts = urlsplit(url)
    if "partNumber" in parts.query:
        return int(parse_qs(parts.query)["partNumber"][0])
    return int(re.search(r"/parts/(\d+)/$", parts.path)[1])


def wait_for_status(page, text: str, timeout: float) -> None:
    """Wait for the page's status line to say ``text``; else fail with what it says instead."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        page.wait_for_selector(f"#upload-status:has-text({text!r})", timeout=timeout * 1000)
    except PlaywrightTimeout:
        raise AssertionError(f"the page says {page.locator('#upload-status').inner_text()!r}") from None


@pytest.mark.parametrize("kind", ["local", "moto", "localstack"])
def test_a_maintainer_uploads_reloads_half_way_resumes_and_publishes(
    kind,
    request,
    live_server,
    browser_page,
    django_user_model,
    tmp_path,
    monkeypatch,
):
    request.getfixturevalue({"local": "local_store", "moto": "s3_store", "localstack": "localstack_store"}[kind])
    if kind != "local":
        call_command("apply_bucket_cors", origins=[live_server.url])
    monkeypatch.setattr(browser_uploads, "PART_SIZE", 5 * MiB)  # the smallest S3 allows: 5 parts
    data = os.urandom(4 * 5 * MiB + 1234)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(data)
    draft = VersionFactory(model__slug="tts", version="v2")
    page = log_in_as_maintainer(live_server, browser_page, django_user_model)
    page.goto(f"{live_server.url}/admin/releases/version/{draft.pk}/change/")
    page.get_by_role("link", name="Upload large files").click()

    # The connection to storage fails for parts 3 to 5: the page keeps trying them while 1 and 2 land.
    page.route(PARTS_HELD_BACK, lambda route: route.abort())
    page.set_input_files("#upload-file", str(weights))
    page.fill("#upload-path", "weights/model.safetensors")
    page.click("#upload-start")
    wait_for_status(page, "2 of 5 parts stored", timeout=30)
    assert page.locator("#upload-name").inner_text() == "weights/model.safetensors (20.0 MiB, 5 parts)"
    page.unroute(PARTS_HELD_BACK)

    page.reload()
    sent = []
    page.on("requestfinished", lambda r: r.method == "PUT" and sent.append(part_number(r.url)))
    page.set_input_files("#upload-file", str(weights))
    page.fill("#upload-path", "weights/model.safetensors")
    page.click("#upload-start")
    wait_for_status(page, "Done:", timeout=60)
    assert sorted(sent) == [3, 4, 5]  # only the parts storage did not hold
    file = File.objects.get(version=draft)
    assert (file.path, file.size, file.sha256) == (
        "weights/model.safetensors",
        len(data),
        hashlib.sha256(data).hexdigest(),
    )
    assert file.sha256 in page.locator("#upload-status").inner_text()
    assert page.locator("#upload-list tbody tr").first.inner_text().startswith("weights/model.safetensors")

    page.get_by_role("link", name=re.compile("Back to")).click()
    page.get_by_role("link", name="Publish").click()
    page.click("input[type=submit][value='Yes, publish']")
    assert Version.objects.get(pk=draft.pk).status == "published"
    download = page.request.get(f"{live_server.url}/models/tts/v2/weights/model.safetensors")
    assert download.ok and hashlib.sha256(download.body()).hexdigest() == file.sha256


def test_a_maintainer_uploads_a_folder_reloads_half_way_and_resumes_with_nothing_typed_again(
    local_store, live_server, browser_page, django_user_model, tmp_path, monkeypatch
):
    monkeypatch.setattr(browser_uploads, "PART_SIZE", 5 * MiB)
    folder = tmp_path / "release"
    contents = {
        "config.yaml": b"sample_rate: 24000\n",
        "model.pt": os.urandom(4 * 5 * MiB + 99),  # five parts; the site's URLs for 3 to 5 are held back
        "vocoder/g.bin": os.urandom(1000),
    }
    for path, data in contents.items():
        (folder / path).parent.mkdir(parents=True, exist_ok=True)
        (folder / path).write_bytes(data)
    draft = VersionFactory(model__slug="tts", version="v3")
    page = log_in_as_maintainer(live_server, browser_page, django_user_model)
    page.goto(f"{live_server.url}/admin/releases/version/{draft.pk}/upload/")

    page.route(PARTS_HELD_BACK, lambda route: route.abort())
    page.set_input_files("#upload-folder", str(folder))
    page.fill("#upload-path", "weights")
    page.click("#upload-start")
    wait_for_status(page, "2 of 5 parts stored", timeout=30)
    assert page.locator("#upload-name").inner_text().startswith("File 2 of 3: weights/model.pt")
    page.unroute(PARTS_HELD_BACK)

    page.reload()
    assert page.input_value("#upload-path") == "weights"  # remembered: nothing to type again
    sent = []
    page.on("requestfinished", lambda r: r.method == "PUT" and sent.append(r.url))
    page.set_input_files("#upload-folder", str(folder))
    page.click("#upload-start")
    wait_for_status(page, "Done: all 3 files are stored and checked (1 were already)", timeout=60)
    assert len(sent) == 3 + 1  # model.pt's parts 3 to 5, and vocoder/g.bin; config.yaml was done
    stored = {file.path: file.sha256 for file in File.objects.filter(version=draft)}
    assert stored == {f"weights/{path}": hashlib.sha256(data).hexdigest() for path, data in contents.items()}
    assert not page.locator("#upload-abort").is_visible()  # nothing left to abort
