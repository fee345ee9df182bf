"""The admin's direct upload in Chromium (Playwright): a maintainer uploads a file of several parts,
the page is reloaded half way, the same file chosen again finishes from the stored parts, and the
version is published. Against the local store, moto's S3, and LocalStack's S3, which checks each
part's signature and checksum and enforces the bucket's CORS rule that `apply_bucket_cors` sets."""

import base64
import hashlib
import os
import re
import struct
import urllib.request
from urllib.parse import parse_qs, urlsplit

import pytest
from django.core.management import call_command

from releases import services
from releases.models import BrowserUpload, File, Version
from releases.services import browser_uploads

from . import test_browser
from .factories import ModelFactory, VersionFactory
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


# Playwright cannot drive the browser's own file picker (a native dialog), nor drop files from the
# desktop with their handles. So the release's files are written into the Origin Private File
# System, whose handles are real FileSystemHandles (kept in IndexedDB, asked for permission, read
# with getFile() like those a picker returns), and only what hands them over is replaced: the folder
# picker, and a dropped item's getAsFileSystemHandle(). Everything after that is the page's own code.
HAND_OVER_THE_TEST_FOLDER = """
const testFolder = async () => (await navigator.storage.getDirectory()).getDirectoryHandle("release");
window.showDirectoryPicker = testFolder;
DataTransferItem.prototype.getAsFileSystemHandle = testFolder;
"""
WRITE_INTO_THE_TEST_FOLDER = """async ([files, block, blocks]) => {
  const bytes = (text) => Uint8Array.from(atob(text), (c) => c.charCodeAt(0));
  const root = await (await navigator.storage.getDirectory()).getDirectoryHandle("release", { create: true });
  for (const [path, text] of Object.entries({ ...files, "model.pt": null })) {
    let folder = root;
    const names = path.split("/");
    for (const name of names.slice(0, -1)) folder = await folder.getDirectoryHandle(name, { create: true });
    const out = await (await folder.getFileHandle(names.at(-1), { create: true })).createWritable();
    if (text !== null) await out.write(bytes(text));
    else {
      const data = bytes(block);  // each MiB of model.pt is this block, its first 4 bytes its number
      for (let n = 0; n < blocks; n++) { new DataView(data.buffer).setUint32(0, n, true); await out.write(data); }
    }
    await out.close();
  }
}"""
BLOCKS = 200  # model.pt: 200 MiB, 13 parts of 16 MiB


def release_files() -> tuple[dict[str, bytes], bytes]:
    small = {
        "README.md": b"# tts v4\n",
        "config.yaml": b"sample_rate: 24000\n",
        "tokenizer.json": os.urandom(3000),
        "vocoder/g.bin": os.urandom(70_000),
    }
    return small, os.urandom(MiB)


def model_pt_sha256(block: bytes) -> str:
    digest = hashlib.sha256()
    for n in range(BLOCKS):
        digest.update(struct.pack("<I", n) + block[4:])
    return digest.hexdigest()


def part_put(url: str) -> tuple[str, int]:
    """The upload and part a part URL is for."""
    found = re.search(r"/uploads/([0-9a-f-]{36})/parts/(\d+)/", url)
    return found[1], int(found[2])


@pytest.mark.parametrize("size", [{"width": 1280, "height": 900}, {"width": 390, "height": 844}], ids=["1280", "390"])
def test_a_maintainer_drops_a_folder_reloads_half_way_and_resumes_without_choosing_anything_again(
    size, local_store, live_server, browser_page, django_user_model, monkeypatch
):
    received = []  # what storage was sent: every part the site received and kept, by file

    def counted(upload, number, *args):
        part = receive_part(upload, number, *args)
        received.append((upload.path, number))
        return part

    receive_part = browser_uploads.receive_part
    monkeypatch.setattr(browser_uploads, "receive_part", counted)
    small, block = release_files()
    model = ModelFactory(slug="tts")
    page = log_in_as_maintainer(live_server, browser_page, django_user_model)
    page.set_viewport_size(size)
    page.context.add_init_script(HAND_OVER_THE_TEST_FOLDER)
    page.goto(f"{live_server.url}/admin/releases/version/add/")
    page.select_option("#id_model", value=str(model.pk))
    page.fill("#id_version", "v4")
    page.click("input[name=_continue]")
    draft = Version.objects.get(model__slug="tts", version="v4")
    page.get_by_role("link", name="Upload large files").click()
    encoded = {path: base64.b64encode(data).decode() for path, data in small.items()}
    page.evaluate(WRITE_INTO_THE_TEST_FOLDER, [encoded, base64.b64encode(block).decode(), BLOCKS])
    assert page.locator("#upload-file").is_hidden()  # this browser chooses through the page's buttons

    dropped = page.evaluate_handle(
        "() => { const d = new DataTransfer(); d.items.add(new File([], 'release')); return d; }"
    )
    page.dispatch_event("#upload-drop", "drop", {"dataTransfer": dropped})  # as the desktop's folder would be
    wait_for_text(page, "#upload-picked", "5 files chosen (200.1 MiB)")
    page.fill("#upload-path", "weights")
    held = []  # parts 3 to 5 of model.pt never arrive: held until the reload, then cut
    page.route(PARTS_HELD_BACK, lambda route: held.append(route))
    page.click("#upload-start")
    wait_for_status(page, "10 of 13 parts stored", timeout=90)
    assert page.locator("#upload-name").inner_text() == "File 3 of 5: weights/model.pt (200.0 MiB, 13 parts)"
    assert sorted(received) == sorted([("weights/README.md", 1), ("weights/config.yaml", 1)] +
                                      [("weights/model.pt", n) for n in [1, 2, *range(6, 14)]])  # fmt: skip
    for route in held:
        route.abort()
    page.reload()
    page.unroute(PARTS_HELD_BACK)
    page.evaluate("localStorage.clear()")  # nothing typed is remembered either: Resume needs none of it
    wait_for_text(page, "#upload-resume-text", "3 unfinished uploads begun in this browser: weights/model.pt, "
                                               "weights/tokenizer.json, weights/vocoder/g.bin")  # fmt: skip
    assert page.evaluate("document.documentElement.scrollWidth") <= size["width"], test_browser.wider(page)
    page.screenshot(path=str(test_browser.ARTIFACTS / f"admin-upload-resume-{size['width']}.png"), full_page=True)
    sent, received[:] = [], []
    page.on("requestfinished", lambda r: r.method == "PUT" and sent.append(part_put(r.url)))
    page.get_by_role("button", name="Resume").click()
    wait_for_status(page, "Done: all 3 files are stored and checked", timeout=120)
    missing = [("weights/model.pt", 3), ("weights/model.pt", 4), ("weights/model.pt", 5)]
    missing += [("weights/tokenizer.json", 1), ("weights/vocoder/g.bin", 1)]
    assert sorted(received) == missing  # only the parts storage did not hold, each once
    uploads = {str(upload.id): upload.path for upload in BrowserUpload.objects.filter(version=draft)}
    assert sorted((uploads[upload], number) for upload, number in sent) == missing
    assert page.evaluate("document.documentElement.scrollWidth") <= size["width"], test_browser.wider(page)
    page.reload()
    assert page.locator("#upload-resume").is_hidden()  # the browser kept nothing more to resume

    expected = {f"weights/{path}": hashlib.sha256(data).hexdigest() for path, data in small.items()}
    expected["weights/model.pt"] = model_pt_sha256(block)
    assert {file.path: file.sha256 for file in File.objects.filter(version=draft)} == expected
    page.get_by_role("link", name=re.compile("Back to")).click()
    page.get_by_role("link", name="Publish").click()
    page.click("input[type=submit][value='Yes, publish']")
    assert Version.objects.get(pk=draft.pk).status == "published"
    for path, sha256 in expected.items():
        assert downloaded_sha256(f"{live_server.url}/models/tts/v4/{path}") == sha256, path


def wait_for_text(page, selector: str, text: str) -> None:
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        page.wait_for_selector(f"{selector}:has-text({text!r})", timeout=30_000)
    except PlaywrightTimeout:
        raise AssertionError(f"{selector} says {page.locator(selector).inner_text()!r}") from None


def downloaded_sha256(url: str) -> str:
    digest = hashlib.sha256()
    with urllib.request.urlopen(url, timeout=60) as response:
        while chunk := response.read(MiB):
            digest.update(chunk)
    return digest.hexdigest()


def test_a_file_changed_since_its_upload_began_is_chosen_again_and_its_other_bytes_start_over(
    local_store, live_server, browser_page, django_user_model, monkeypatch
):
    monkeypatch.setattr(browser_uploads, "PART_SIZE", 5 * MiB)
    small, block = release_files()
    draft = VersionFactory(model__slug="tts", version="v5")
    page = log_in_as_maintainer(live_server, browser_page, django_user_model)
    page.context.add_init_script(HAND_OVER_THE_TEST_FOLDER)
    page.goto(f"{live_server.url}/admin/releases/version/{draft.pk}/upload/")
    page.evaluate(WRITE_INTO_THE_TEST_FOLDER, [{}, base64.b64encode(block).decode(), 4 * 5 + 1])
    held = []
    page.route(PARTS_HELD_BACK, lambda route: held.append(route))
    page.get_by_role("button", name="Choose a folder…").click()
    page.click("#upload-start")
    wait_for_status(page, "2 of 5 parts stored", timeout=30)
    for route in held:
        route.abort()
    page.reload()
    page.unroute(PARTS_HELD_BACK)
    first = BrowserUpload.objects.get(version=draft)

    # Another model.pt of the same size, written where the first one was: its first part differs.
    changed = block[:10] + bytes([block[10] ^ 1]) + block[11:]
    page.evaluate(WRITE_INTO_THE_TEST_FOLDER, [{}, base64.b64encode(changed).decode(), 4 * 5 + 1])
    page.get_by_role("button", name="Resume").click()
    wait_for_text(page, "#upload-resume-problems", "model.pt changed since its upload began")
    assert "choose it again" in page.locator("#upload-resume-problems").inner_text()
    assert BrowserUpload.objects.get(pk=first.pk).state == "uploading"  # nothing sent, nothing lost yet

    sent = []
    page.on("requestfinished", lambda r: r.method == "PUT" and sent.append(part_put(r.url)))
    page.get_by_role("button", name="Choose a folder…").click()
    page.click("#upload-start")
    wait_for_status(page, "Done:", timeout=60)
    first.refresh_from_db()
    assert (first.state, first.detail) == (
        "aborted",
        "another file was chosen for this path (its part 1 has other bytes)",
    )
    second = BrowserUpload.objects.exclude(pk=first.pk).get(version=draft)
    assert sorted(sent) == [(str(second.id), n) for n in range(1, 6)]  # every part of the other bytes
    digest = hashlib.sha256(b"".join(struct.pack("<I", n) + changed[4:] for n in range(21))).hexdigest()
    assert File.objects.get(version=draft).sha256 == digest


SIGN = re.compile(r"/uploads/[0-9a-f-]+/parts/\d+/sign/$")


def test_a_gateway_error_while_a_web_node_restarts_is_waited_out_not_taken_for_a_logout(
    local_store, live_server, browser_page, django_user_model, tmp_path, monkeypatch
):
    """A proxy's 502 page for a part's signature (a node restarting behind a load balancer) is tried
    again: the upload completes. Only the login page means the session ended."""
    monkeypatch.setattr(browser_uploads, "PART_SIZE", 5 * MiB)
    data = os.urandom(5 * MiB + 77)  # two parts
    weights = tmp_path / "model.pt"
    weights.write_bytes(data)
    draft = VersionFactory(model__slug="tts", version="v8")
    page = log_in_as_maintainer(live_server, browser_page, django_user_model)
    page.goto(f"{live_server.url}/admin/releases/version/{draft.pk}/upload/")
    answered = []

    def gateway_down_twice(route):
        if len(answered) < 2:
            answered.append(502)
            return route.fulfill(status=502, content_type="text/html", body="<html><h1>502 Bad Gateway</h1></html>")
        route.continue_()

    page.route(SIGN, gateway_down_twice)
    page.set_input_files("#upload-file", str(weights))
    page.click("#upload-start")
    wait_for_status(page, "Done:", timeout=60)
    assert answered == [502, 502]
    assert File.objects.get(version=draft).sha256 == hashlib.sha256(data).hexdigest()


def test_a_folder_with_an_empty_file_uploads_the_others_and_stores_the_empty_one_as_it_is(
    local_store, live_server, browser_page, django_user_model
):
    small = {"config.yaml": b"a: 1\n", "samples/.gitkeep": b""}  # an empty file has no part to send
    draft = VersionFactory(model__slug="tts", version="v7")
    page = log_in_as_maintainer(live_server, browser_page, django_user_model)
    page.context.add_init_script(HAND_OVER_THE_TEST_FOLDER)
    page.goto(f"{live_server.url}/admin/releases/version/{draft.pk}/upload/")
    encoded = {path: base64.b64encode(data).decode() for path, data in small.items()}
    page.evaluate(WRITE_INTO_THE_TEST_FOLDER, [encoded, base64.b64encode(b"w" * 1000).decode(), 1])
    page.get_by_role("button", name="Choose a folder…").click()
    wait_for_text(page, "#upload-picked", "3 files chosen")
    page.click("#upload-start")
    wait_for_status(page, "Done: all 3 files are stored and checked", timeout=60)
    assert "samples/.gitkeep is empty, stored as such" in page.locator("#upload-status").inner_text()

    expected = {path: hashlib.sha256(data).hexdigest() for path, data in small.items()}
    expected["model.pt"] = hashlib.sha256(struct.pack("<I", 0) + b"w" * 996).hexdigest()  # the one block, numbered
    assert {file.path: file.sha256 for file in File.objects.filter(version=draft)} == expected
    assert not BrowserUpload.objects.filter(version=draft, path="samples/.gitkeep").exists()  # one request, no parts
    page.click("#upload-start")  # the same folder again: the empty file already held refuses nothing
    wait_for_status(page, "Done: all 3 files are stored and checked (2 were already)", timeout=60)
    services.publish_version(draft)
    assert downloaded_sha256(f"{live_server.url}/models/tts/v7/samples/.gitkeep") == expected["samples/.gitkeep"]


@pytest.mark.parametrize("size", [{"width": 1280, "height": 800}, {"width": 390, "height": 844}], ids=["1280", "390"])
def test_the_upload_page_offering_resume_passes_axe_and_fits_the_screen(
    size, local_store, live_server, browser_page, django_user_model
):
    # axe is injected as a script, which the site's CSP refuses (rightly): this context bypasses it.
    context = browser_page.context.browser.new_context(bypass_csp=True, viewport=size)
    context.add_init_script(HAND_OVER_THE_TEST_FOLDER)
    page = log_in_as_maintainer(live_server, context.new_page(), django_user_model)
    draft = VersionFactory(model__slug="tts", version="v6")
    page.goto(f"{live_server.url}/admin/releases/version/{draft.pk}/upload/")
    assert test_browser.axe_problems(page) == []  # the page's own choosers and drop zone
    page.evaluate(
        WRITE_INTO_THE_TEST_FOLDER,
        [{"config.yaml": base64.b64encode(b"a: 1\n").decode()}, base64.b64encode(b"w" * 1000).decode(), 1],
    )
    held = []
    page.route(re.compile(r"/parts/\d+/\?token="), lambda route: held.append(route))
    page.get_by_role("button", name="Choose a folder…").click()
    page.click("#upload-start")
    wait_for_text(page, "#upload-name", "File 1 of 2: config.yaml")
    for route in held:
        route.abort()
    page.reload()
    wait_for_text(page, "#upload-resume-text", "2 unfinished uploads begun in this browser: config.yaml, model.pt")
    assert page.evaluate("document.documentElement.scrollWidth") <= size["width"], test_browser.wider(page)
    assert test_browser.axe_problems(page) == []
    context.close()
