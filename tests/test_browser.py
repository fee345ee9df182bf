"""Browser journeys with Playwright driving Debian's Chromium against the live test server.

Screenshots of each public page go to test-artifacts/ (current ones are kept in docs/screenshots/).
"""

import hashlib
import os
from pathlib import Path

import pytest

from releases.models import Version

from .data import WEIGHTS
from .servers import REPO_ROOT

pytestmark = pytest.mark.django_db(transaction=True)

ARTIFACTS = REPO_ROOT / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]  # fmt: skip


@pytest.fixture
def browser_page(live_server, monkeypatch):
    # Playwright's sync API runs an event loop in this thread; the ORM calls the tests make
    # between browser steps are ordinary blocking calls all the same.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), "make test installs Debian's chromium"
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        context = browser.new_context(accept_downloads=True, viewport={"width": 1200, "height": 900})
        context.grant_permissions(["clipboard-read", "clipboard-write"], origin=live_server.url)
        page = context.new_page()
        page.set_default_timeout(15_000)
        yield page
        context.close()
        browser.close()
        from django.db import connections

        connections.close_all()  # the ORM calls made beside the event loop opened their own


def log_in_as_maintainer(live_server, page, django_user_model):
    django_user_model.objects.create_superuser("maintainer", "m@example.org", "correct horse battery")
    page.goto(live_server.url + "/admin/")
    page.fill("#id_username", "maintainer")
    page.fill("#id_password", "correct horse battery")
    page.click("input[type=submit]")
    return page


def test_a_visitor_browses_copies_a_command_and_downloads_the_right_bytes(live_server, browser_page, catalogue):
    page = browser_page
    page.goto(live_server.url + "/")
    page.screenshot(path=str(ARTIFACTS / "index.png"), full_page=True)
    page.get_by_role("link", name="index-tts", exact=True).click()
    assert page.locator("h1").inner_text() == "index-tts"
    page.screenshot(path=str(ARTIFACTS / "model.png"), full_page=True)
    page.get_by_role("link", name="v10", exact=True).first.click()
    page.wait_for_url("**/models/index-tts/v10/")
    page.screenshot(path=str(ARTIFACTS / "version.png"), full_page=True)
    content = WEIGHTS["model.pt"] + b"v10"
    assert hashlib.sha256(content).hexdigest() in page.content()

    page.get_by_role("button", name="Copy the start-script lines").click()
    copied = page.evaluate("navigator.clipboard.readText()")
    assert f"curl -fsSL {live_server.url}/fetch-model.sh -o " in copied
    assert copied.endswith('sh "$MODEL_DIR/.fetch-model.sh" index-tts v10 "$MODEL_DIR"')

    with page.expect_download() as download_info:
        page.get_by_role("link", name="model.pt", exact=True).click()
    download = download_info.value
    assert download.suggested_filename == "model.pt"
    assert Path(download.path()).read_bytes() == content


def test_the_yanked_page_shows_its_banner(live_server, browser_page, catalogue):
    page = browser_page
    page.goto(live_server.url + "/models/index-tts/v11/")
    banner = page.locator(".banner.yanked")
    assert banner.is_visible() and "Corrupt vocoder; use v10." in banner.inner_text()
    page.screenshot(path=str(ARTIFACTS / "version-yanked.png"), full_page=True)


def test_staff_create_upload_publish_then_yank(live_server, browser_page, django_user_model, tmp_path, publish):
    publish("index-tts", "v1", {"model.pt": b"v1 weights"})
    page = log_in_as_maintainer(live_server, browser_page, django_user_model)
    page.goto(live_server.url + "/admin/releases/version/add/")
    page.select_option("#id_model", label="index-tts")
    page.fill("#id_version", "v2")
    page.fill("#id_notes", "Faster vocoder.")
    page.click("input[name=_continue]")
    assert Version.objects.get(version="v2").status == "draft"

    weights = tmp_path / "model.pt"
    weights.write_bytes(b"v2 weights " * 1000)
    page.set_input_files("#id_files-0-upload", str(weights))
    page.click("input[name=_continue]")
    assert Version.objects.get(version="v2").files.get().size == weights.stat().st_size

    page.get_by_role("link", name="Publish").click()
    page.click("input[type=submit][value='Yes, publish']")
    assert Version.objects.get(version="v2").status == "published"
    page.goto(live_server.url + "/models/index-tts/")
    assert page.locator(".badge.latest").count() == 1 and "v2" in page.locator("tbody tr").first.inner_text()

    page.goto(live_server.url + "/admin/releases/version/")
    page.get_by_role("link", name="index-tts v2").click()
    page.get_by_role("link", name="Yank").click()
    page.fill("textarea[name=reason]", "Clipping at high volume; use v1.")
    page.click("input[type=submit][value='Yes, yank']")
    page.goto(live_server.url + "/models/index-tts/v2/")
    assert "Clipping at high volume; use v1." in page.locator(".banner.yanked").inner_text()
    assert os.path.exists(ARTIFACTS)


PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 900}


def screenshots(page, name: str) -> None:
    """The page at phone and desktop widths (docs/screenshots keeps the current ones)."""
    for label, size in (("phone", PHONE), ("desktop", DESKTOP)):
        page.set_viewport_size(size)
        page.screenshot(path=str(ARTIFACTS / f"{name}-{label}.png"), full_page=True)
    page.set_viewport_size(DESKTOP)


def test_a_visitor_finds_a_model_reads_its_card_sees_what_changed_and_counts_a_download(
    live_server, browser_page, publish
):
    from releases import download_fold, services

    publish("index-tts", "v1", {"model.pt": b"old weights", "config.yaml": b"a: 1\n"})
    publish("index-tts", "v2", {"model.pt": b"new weights!", "config.yaml": b"a: 1\n", "vocoder/g.bin": b"g"})
    publish("other-model", "v1", {"model.pt": b"x"})
    services.set_model_info("index-tts", description="# IndexTTS2\n\nZero-shot **speech** synthesis.",
                            license="Apache-2.0", tags=["tts", "chinese"], homepage="https://example.org/tts")  # fmt: skip
    page = browser_page
    page.goto(live_server.url + "/")
    page.fill("#q", "speech")
    page.click("form.search button")
    cards = page.locator("li.card")
    assert page.locator("li.card h2").all_inner_texts() == ["index-tts"]  # "speech" is in its card only
    assert "Apache-2.0" in cards.first.inner_text() and "tts" in page.locator("li.card .tags").inner_text()
    screenshots(page, "index")

    page.locator("li.card h2 a").click()
    page.wait_for_url("**/models/index-tts/")
    assert page.locator(".model-card h3").inner_text() == "IndexTTS2"  # the page has one h1
    license_link = page.get_by_role("link", name="Apache License 2.0")
    assert license_link.get_attribute("href") == "https://spdx.org/licenses/Apache-2.0.html"
    assert "0 downloads" in page.locator(".model-facts").inner_text()
    screenshots(page, "model")

    page.get_by_role("link", name="v2", exact=True).first.click()
    page.wait_for_url("**/models/index-tts/v2/")
    changes = page.locator("section.changes").inner_text()
    assert "What changed since v1" in changes and "vocoder/g.bin" in changes and "model.pt" in changes
    assert "config.yaml" not in changes
    assert page.locator("tr.folder").inner_text() == "vocoder/"
    screenshots(page, "version")

    with page.expect_download() as download_info:
        page.get_by_role("link", name="model.pt", exact=True).click()
    assert Path(download_info.value.path()).read_bytes() == b"new weights!"
    download_fold.fold()  # what the beat job does every few minutes
    page.reload()
    assert "1 download (1 in the last 30 days)" in page.locator(".downloads").first.inner_text()
    page.goto(live_server.url + "/?sort=downloads")
    assert page.locator("li.card h2").all_inner_texts() == ["index-tts", "other-model"]


def test_a_maintainer_edits_the_model_card_and_license_in_the_admin(
    live_server, browser_page, django_user_model, publish
):
    from releases.models import MLModel

    publish("index-tts", "v1", {"model.pt": b"v1 weights"})
    page = log_in_as_maintainer(live_server, browser_page, django_user_model)
    page.goto(live_server.url + f"/admin/releases/mlmodel/{MLModel.objects.get().pk}/change/")
    page.fill("#id_description", "Reads text **aloud**.")
    page.fill("#id_license", "Not-A-License")
    page.click("input[name=_continue]")
    assert "is not an SPDX license identifier" in page.locator(".errorlist").first.inner_text()
    page.fill("#id_license", "MIT")
    page.fill("#id_tag_list", "TTS, english")
    page.fill("#id_source_url", "git.example.org/tts")
    page.click("input[name=_continue]")
    model = MLModel.objects.get()
    assert (model.license, model.source_url) == ("MIT", "https://git.example.org/tts")
    assert sorted(model.tags.values_list("name", flat=True)) == ["english", "tts"]
    page.goto(live_server.url + "/models/index-tts/")
    assert page.get_by_role("link", name="MIT License").is_visible()
    assert page.locator(".model-card strong").inner_text() == "aloud"


def in_first_screen(page, selector: str) -> bool:
    """Whether the element's top edge is inside the viewport without scrolling."""
    top = page.evaluate(f"document.querySelector({selector!r}).getBoundingClientRect().top")
    return 0 <= top < page.viewport_size["height"] - 150  # its tabs and first lines show, not just a border


@pytest.mark.parametrize(
    "size", [{"width": 1280, "height": 800}, {"width": 390, "height": 844}], ids=["desktop", "phone"]
)
def test_a_visitor_finds_the_use_box_without_scrolling_and_copies_a_line(live_server, browser_page, catalogue, size):
    page = browser_page
    page.set_viewport_size(size)
    for path in ("/models/index-tts/", "/models/index-tts/v10/"):
        page.goto(live_server.url + path)
        assert in_first_screen(page, "section.use"), path
        assert page.evaluate("document.documentElement.scrollWidth") <= size["width"], path
    page.get_by_role("tab", name="Python").click()
    assert page.locator("#cmd-python").is_visible() and not page.locator("#cmd-start").is_visible()
    page.get_by_role("button", name="Copy the Python lines").click()
    copied = page.evaluate("navigator.clipboard.readText()")
    assert copied.endswith("python3 fetch_model.py index-tts v10 checkpoints/index-tts/v10")
    page.get_by_role("tab", name="curl").click()
    page.get_by_role("button", name="Copy the curl lines for model.pt").click()
    assert page.evaluate("navigator.clipboard.readText()").startswith("curl -fL --create-dirs -o model.pt ")


def test_without_javascript_the_tabs_are_blocks_one_below_the_other(live_server, browser_page, catalogue):
    context = browser_page.context.browser.new_context(java_script_enabled=False)
    page = context.new_page()
    page.goto(live_server.url + "/models/index-tts/v10/")
    for block in ("#cmd-start", "#cmd-python", "#cmd-ensure", "#cmd-powershell", "#cmd-one-file"):
        assert page.locator(block).is_visible(), block
    assert page.get_by_role("tab").count() == 0
    context.close()


def wider(page) -> list[str]:
    """What sticks out of the screen, outside code blocks (they scroll inside themselves)."""
    return page.evaluate(
        "() => [...document.querySelectorAll('body *')].filter(e => !e.closest('pre') &&"
        " e.getBoundingClientRect().right > document.documentElement.clientWidth + 0.5).slice(0, 5)"
        ".map(e => `${e.tagName}.${e.className} ${e.getBoundingClientRect().right} ${e.textContent.slice(0, 30)}`)"
    )


AXE = Path(__file__).parent / "node_modules" / "axe-core" / "axe.min.js"  # tests/package.json pins it


def axe_problems(page) -> list[str]:
    """axe-core's serious and critical violations on the page as it is, target size (WCAG 2.2) included."""
    assert AXE.exists(), "scripts/ensure-services.sh installs axe-core (npm ci in tests/)"
    page.add_script_tag(path=str(AXE))
    result = page.evaluate("axe.run(document, {resultTypes: ['violations'], rules: {'target-size': {enabled: true}}})")
    return [
        f"{v['impact']} {v['id']}: {[node['target'] for node in v['nodes']][:3]}"
        for v in result["violations"]
        if v["impact"] in ("serious", "critical")
    ]


PAGE_TYPES = {
    "index": "/",
    "model": "/models/index-tts/",
    "version": "/models/index-tts/v10/",
    "version-yanked": "/models/index-tts/v11/",
    "withdrawn": "/models/index-tts/v12/",
    "not-found": "/models/index-ts/",
    "admin-version": "/admin/releases/version/{draft}/change/",
    "admin-upload": "/admin/releases/version/{draft}/upload/",
}


@pytest.mark.parametrize(
    "size", [{"width": 1280, "height": 800}, {"width": 390, "height": 844}, {"width": 360, "height": 740}],
    ids=["1280", "390", "360"],
)  # fmt: skip
def test_every_page_type_passes_axe_fits_a_phone_and_has_one_h1(
    live_server, browser_page, catalogue, django_user_model, size
):
    # axe is injected as a script: the site's CSP (script-src 'self') would refuse it, rightly.
    context = browser_page.context.browser.new_context(bypass_csp=True, viewport=size)
    page = context.new_page()
    log_in_as_maintainer(live_server, page, django_user_model)
    label = {1280: "desktop", 390: "phone"}.get(size["width"])
    for name, path in PAGE_TYPES.items():
        page.goto(live_server.url + path.format(draft=catalogue["v13"].pk))
        assert page.evaluate("document.documentElement.scrollWidth") <= size["width"], f"{name}: {wider(page)}"
        assert page.locator("h1").count() == 1, name
        problems = axe_problems(page)
        assert problems == [], f"{name}: {problems}"
        if label:
            page.screenshot(path=str(ARTIFACTS / f"{name}-{label}.png"))  # the first screen: docs/screenshots
    context.close()
