"""The version page: its files as a tree, and what changed since the previous published version."""

import hashlib
import html
import re

import pytest

pytestmark = pytest.mark.django_db


def text(html: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


@pytest.fixture
def two_versions(publish):
    publish("tts", "v1", {"model.pt": b"a" * 2000, "config.yaml": b"x: 1\n", "old/vocab.txt": b"v" * 100})
    publish("tts", "v1.5", {"model.pt": b"draft"}, draft=True)  # drafts are never "the previous version"
    publish("tts", "v2", {"model.pt": b"b" * 3000, "config.yaml": b"x: 1\n", "ckpt/vocoder/g.bin": b"g" * 500})


def test_what_changed_since_the_previous_published_version(client, two_versions):
    page = client.get("/models/tts/v2/").content.decode()
    assert 'What changed since <a href="/models/tts/v1/">v1</a>' in page
    changes = text(page[page.index('id="changes-title"') : page.index("</section>", page.index('id="changes-title"'))])
    assert "added ckpt/vocoder/g.bin +500 bytes" in changes
    assert "changed model.pt +1000 bytes" in changes  # 2000 -> 3000
    assert "removed old/vocab.txt −100 bytes" in changes
    assert "1 file unchanged" in changes and "config.yaml" not in changes


def test_the_first_version_says_nothing_about_changes(client, two_versions):
    assert "What changed since" not in client.get("/models/tts/v1/").content.decode()


def test_a_version_with_the_same_files_says_so(client, publish):
    publish("tts", "v1", {"model.pt": b"same"})
    publish("tts", "v2", {"model.pt": b"same"})
    page = client.get("/models/tts/v2/").content.decode()
    assert "The same files as v1." in page


def test_files_in_folders_are_shown_under_their_folder(client, two_versions):
    page = client.get("/models/tts/v2/").content.decode()
    assert '<tr class="folder"><th colspan="3" scope="rowgroup">ckpt/vocoder/</th></tr>' in page
    assert re.search(
        r'<tr class="nested">\s*<td><a class="download" href="[^"]+" download title="ckpt/vocoder/g.bin">g.bin</a>',
        page,
    )
    assert re.search(r'<tr>\s*<td><a class="download" href="[^"]+" download title="model.pt">model.pt</a>', page)
    assert page.count('<tr class="folder">') == 1  # top-level files need no heading


def test_the_api_gives_the_total_size_and_the_changes(client, two_versions):
    body = client.get("/api/v1/models/tts/versions/v2").json()
    assert body["total_size"] == 3000 + 5 + 500
    assert body["changes"] == {
        "previous": "v1",
        "added": ["ckpt/vocoder/g.bin"],
        "removed": ["old/vocab.txt"],
        "changed": ["model.pt"],
    }
    first = client.get("/api/v1/models/tts/versions/v1").json()
    assert first["changes"] == {"previous": None, "added": [], "removed": [], "changed": []}


def test_the_page_shows_the_python_lines_beside_the_shell_ones(client, two_versions):
    page = client.get("/models/tts/v2/").content.decode()
    assert "fetch_model.py.new &amp;&amp; mv fetch_model.py.new fetch_model.py ||" in page
    assert "\npython3 fetch_model.py tts v2 checkpoints/tts/v2" in page
    assert "Invoke-WebRequest http://testserver/fetch_model.py -OutFile fetch_model.py\n" in page
    assert "python fetch_model.py tts v2 checkpoints\\tts\\v2" in page
    assert 'ensure_model("tts", "v2", "checkpoints/tts/v2",' in page and 'site="http://testserver")' in page


def _use_box(page: str) -> str:
    start = page.index('<section class="use"')
    return html.unescape(page[start : page.index("</section>", start)])


def test_the_use_box_comes_first_and_holds_every_way_in(client, two_versions):
    page = client.get("/models/tts/v2/").content.decode()
    box = _use_box(page)
    assert page.index('<section class="use"') < page.index('id="changes-title"') < page.index('id="files-title"')
    for block in ('id="cmd-start"', 'id="cmd-python"', 'id="cmd-ensure"', 'id="cmd-powershell"', 'id="cmd-one-file"'):
        assert block in box
    # the curl tab fetches the largest file by its stable URL and checks it
    assert "curl -fL --create-dirs -o model.pt http://testserver/models/tts/v2/model.pt\n" in box
    assert "| sha256sum -c" in box


def test_the_use_box_is_safe_to_paste_into_an_interactive_shell(client, two_versions):
    box = _use_box(client.get("/models/tts/v2/").content.decode())
    assert "set -e" not in box and "exit" not in box  # a failure must not close the visitor's shell
    assert 'sh "$MODEL_DIR/.fetch-model.sh" tts v2 "$MODEL_DIR"' in box


def test_every_copy_button_is_named_for_what_it_copies(client, two_versions):
    page = client.get("/models/tts/v2/").content.decode()
    labels = re.findall(r'<button type="button" class="copy" data-copy="[^"]+" aria-label="([^"]+)"', page)
    assert page.count('class="copy"') == len(labels) == len(set(labels))
    assert "Copy the SHA-256 of ckpt/vocoder/g.bin" in labels and "Copy the start-script lines" in labels


def test_the_model_page_offers_its_latest_version_at_the_top(client, two_versions):
    page = client.get("/models/tts/").content.decode()
    box = _use_box(page)
    assert page.index('<section class="use"') < page.index("<h2>Versions</h2>")
    assert 'sh "$MODEL_DIR/.fetch-model.sh" tts v2 "$MODEL_DIR"' in box
    assert "python3 fetch_model.py tts v2 checkpoints/tts/v2" in box
    assert "curl -fL --create-dirs -o model.pt http://testserver/models/tts/v2/model.pt" in box


def test_sha256_is_shortened_with_the_full_value_on_demand(client, two_versions):
    page = client.get("/models/tts/v2/").content.decode()
    full = hashlib.sha256(b"b" * 3000).hexdigest()
    assert f"<summary><code>{full[:12]}…{full[-4:]}</code>" in page
    assert '<code class="sha" id="sha-' in page and full in page


def test_sizes_are_binary_and_say_so(client, publish):
    publish("tts", "v1", {"model.pt": b"x" * 3_000_000})
    page = client.get("/models/tts/v1/").content.decode()
    assert "2.9 MiB" in page and " MB" not in page


def test_pages_carry_a_favicon_and_share_preview_tags(client, two_versions):
    page = client.get("/models/tts/v2/").content.decode()
    assert '<link rel="icon" href="/static/releases/favicon.svg' in page
    assert '<meta property="og:title" content="tts v2">' in page
    assert '<meta property="og:description" content="tts v2: 3 files, 3.4 KiB' in page
    assert '<meta property="og:url" content="http://testserver/models/tts/v2/">' in page
    assert client.get("/static/releases/favicon.svg").status_code == 200
