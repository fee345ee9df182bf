"""The version page: its files as a tree, and what changed since the previous published version."""

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
