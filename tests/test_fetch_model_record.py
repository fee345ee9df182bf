"""The served Python client over the life of an install: the record of what it verified, later
runs that trust it, starts with the site down or offline, yanked versions, subsets, one counted
download per file, and reuse that never reaches into folders no client made."""

import os
import stat
import subprocess
import sys

import pytest
from django.core.signals import request_started

from .clients import FILES
from .servers import free_port
from .test_fetch_model import RECORD, load_client, run, served_client, tree

pytestmark = pytest.mark.django_db(transaction=True)


def record_lines(dest):
    return (dest / RECORD).read_text(encoding="utf-8").split("\n")


def down(env=None):
    """The environment of a run whose site is not there (nothing listens on its port)."""
    return {"MODEL_SITE": f"http://127.0.0.1:{free_port()}", "FETCH_MODEL_RETRIES": "2", **(env or {})}


@pytest.fixture
def script(client_site, tmp_path):
    return served_client(client_site, tmp_path)


@pytest.fixture
def stable_gets():
    """Every request for a stable URL (/models/...) the site received: (method, path, Range)."""
    seen = []

    def note(sender, environ, **kwargs):
        if environ["PATH_INFO"].startswith("/models/"):
            seen.append((environ["REQUEST_METHOD"], environ["PATH_INFO"], environ.get("HTTP_RANGE")))

    request_started.connect(note)
    yield seen
    request_started.disconnect(note)


# --- the record and the quick check ---------------------------------------------------------------


def test_a_complete_run_leaves_a_record_of_read_only_files_with_their_stat_facts(script, tmp_path):
    dest = tmp_path / "v2"
    (dest).mkdir()
    (dest / ".fetch-model.json").write_text('{"model": "index-tts", "version": "v2"}')  # the old note
    result = run(script, "index-tts", "latest", dest)
    assert result.returncode == 0, result.stderr
    lines = record_lines(dest)
    assert lines[0] == "fetch-model-record 1" and lines[-1] == ""
    header = dict(line.split("\t", 1) for line in lines[1:] if line and not line.startswith("file\t"))
    assert header["model"] == "index-tts" and header["requested"] == "latest" and header["version"] == "v2"
    assert header["client"] == "fetch_model.py/1" and header["verified"].endswith("Z") and len(header["verified"]) == 20
    rows = [line.split("\t") for line in lines if line.startswith("file\t")]
    assert [row[6] for row in rows] == sorted(FILES)  # the site's order: by path
    for _, size, sha256, mtime, inode, ctime, path in rows:
        facts = os.stat(dest / path)
        assert not facts.st_mode & 0o222, path  # read-only, before the facts were taken
        assert int(size) == facts.st_size and int(inode) == facts.st_ino and len(sha256) == 64
        assert mtime == f"{facts.st_mtime_ns // 10**9}.{facts.st_mtime_ns % 10**9:09d}"
        assert ctime == f"{facts.st_ctime_ns // 10**9}.{facts.st_ctime_ns % 10**9:09d}"
    assert not (dest / ".fetch-model.json").exists() and not list(dest.glob(f"{RECORD}.*"))
    assert tree(dest) == FILES


def test_a_later_run_trusts_unchanged_files_and_verify_rehashes_them(script, tmp_path, served):
    dest = tmp_path / "v2"
    assert run(script, "index-tts", "v2", dest).returncode == 0
    before = (dest / RECORD).read_text()
    served.clear()
    later = run(script, "index-tts", "v2", dest)
    assert later.returncode == 0, later.stderr
    assert later.stderr.count("already there, verified at ") == len(FILES) and served == []
    for how in (["--verify"], []):
        again = run(script, "index-tts", "v2", dest, *how, env={} if how else {"FETCH_MODEL_VERIFY": "1"})
        assert again.returncode == 0, again.stderr
        assert again.stderr.count("already there, verified\n") == len(FILES) and "verified at" not in again.stderr
    assert [line for line in (dest / RECORD).read_text().splitlines() if line.startswith("file")] == [
        line for line in before.splitlines() if line.startswith("file")
    ]


def test_a_file_changed_in_place_with_its_mtime_put_back_is_caught_and_fetched_again(script, tmp_path):
    dest = tmp_path / "v2"
    assert run(script, "index-tts", "v2", dest).returncode == 0
    target = dest / "checkpoints" / "vocoder.bin"
    facts = os.stat(target)
    target.chmod(0o644)
    with open(target, "r+b") as out:  # same size, same inode: only the ctime tells
        out.write(b"\0" * 100)
    os.utime(target, ns=(facts.st_atime_ns, facts.st_mtime_ns))
    again = run(script, "index-tts", "v2", dest)
    assert again.returncode == 0, again.stderr
    assert "checkpoints/vocoder.bin: changed since it was verified; fetching it again" in again.stderr
    assert "checkpoints/vocoder.bin: downloaded, SHA-256 verified" in again.stderr
    assert again.stderr.count("already there, verified at ") == len(FILES) - 1
    assert tree(dest) == FILES


def test_a_touched_file_with_the_right_bytes_is_rehashed_kept_and_recorded_anew(script, tmp_path, served):
    dest = tmp_path / "v2"
    assert run(script, "index-tts", "v2", dest).returncode == 0
    os.utime(dest / "model.pt", (1_000_000_000, 1_000_000_000))
    served.clear()
    again = run(script, "index-tts", "v2", dest)
    assert again.returncode == 0 and "model.pt: already there, verified\n" in again.stderr and served == []
    row = next(line for line in record_lines(dest) if line.endswith("\tmodel.pt"))
    assert row.split("\t")[3] == "1000000000.000000000"


@pytest.mark.parametrize(
    "garbage", [b"", b"fetch-model-record 2\n", b"\xff\xfe not utf-8", b"fetch-model-record 1\nfile\tx\n"]
)
def test_an_unreadable_record_counts_as_absent(script, tmp_path, garbage):
    dest = tmp_path / "v2"
    dest.mkdir()
    (dest / RECORD).write_bytes(garbage)
    result = run(script, "index-tts", "v2", dest)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr and record_lines(dest)[0] == "fetch-model-record 1"
    offline = run(script, "index-tts", "v2", tmp_path / "never", env={"FETCH_MODEL_OFFLINE": "1"})
    assert offline.returncode == 4


def test_unknown_keys_in_a_record_are_ignored(script, tmp_path):
    dest = tmp_path / "v2"
    assert run(script, "index-tts", "v2", dest).returncode == 0
    lines = record_lines(dest)
    (dest / RECORD).write_text("\n".join(lines[:1] + ["future\tsomething new"] + lines[1:]), encoding="utf-8")
    again = run(script, "index-tts", "v2", dest)
    assert again.stderr.count("already there, verified at ") == len(FILES)


# --- the site down, and offline -------------------------------------------------------------------


def test_with_the_site_down_a_verified_folder_starts_with_one_warning(script, tmp_path):
    dest = tmp_path / "v2"
    assert run(script, "index-tts", "latest", dest).returncode == 0
    for asked in ("latest", "v2"):
        result = run(script, "index-tts", asked, dest, env=down())
        assert result.returncode == 0, result.stderr
        [line] = result.stderr.splitlines()
        assert line.startswith("fetch-model: warning: cannot reach http://127.0.0.1:")
        assert "; using index-tts v2 as verified at 20" in line
    offline = run(script, "index-tts", "latest", dest, "--offline")
    assert offline.returncode == 0 and offline.stderr.startswith("fetch-model: offline: using index-tts v2 as verified")
    assert len(offline.stderr.splitlines()) == 1
    assert tree(dest) == FILES


def test_with_the_site_down_an_incomplete_or_changed_folder_fails_and_writes_nothing(script, tmp_path):
    never = tmp_path / "never"
    result = run(script, "index-tts", "v2", never, env=down())
    assert result.returncode == 4 and "cannot reach" in result.stderr and not never.exists()
    dest = tmp_path / "v2"
    assert run(script, "index-tts", "v2", dest).returncode == 0
    other = run(script, "index-tts", "v1", dest, env=down())  # the record is v2's
    assert other.returncode == 4
    (dest / "config.yaml").chmod(0o644)
    (dest / "config.yaml").write_bytes(b"sample_rate: 16000\n")  # edited: not the verified bytes
    before = sorted(path.name for path in dest.rglob("*"))
    for env in (down(), {"FETCH_MODEL_OFFLINE": "1"}):
        failed = run(script, "index-tts", "v2", dest, env=env)
        assert failed.returncode == 4, failed.stderr
        assert sorted(path.name for path in dest.rglob("*")) == before
    assert "has no complete verified copy in" in failed.stderr


def test_offline_needs_the_same_patterns(script, tmp_path):
    dest = tmp_path / "v2"
    assert run(script, "index-tts", "v2", dest, "--include", "*.yaml").returncode == 0
    assert run(script, "index-tts", "v2", dest, "--offline").returncode == 4
    same = run(script, "index-tts", "v2", dest, "--offline", env={"FETCH_MODEL_INCLUDE": "*.yaml"})
    assert same.returncode == 0, same.stderr


def test_a_withdrawn_version_is_an_answer_not_an_outage(client_site, script, tmp_path):
    from releases import services
    from releases.models import Version

    dest = tmp_path / "v2"
    assert run(script, "index-tts", "v2", dest).returncode == 0
    services.withdraw_version(Version.objects.get(model__slug="index-tts", version="v2"))
    result = run(script, "index-tts", "v2", dest)
    assert result.returncode == 3, result.stderr


def test_the_library_starts_offline_too(script, tmp_path):
    dest = tmp_path / "lib"
    assert run(script, "index-tts", "v2", dest).returncode == 0
    program = f"""
import sys
sys.path.insert(0, {str(script.parent)!r})
from fetch_model import FetchError, ensure_model
print(ensure_model("index-tts", "v2", {str(dest)!r}, site={down()["MODEL_SITE"]!r}, quiet=True, retries=1))
try:
    ensure_model("index-tts", "v2", {str(tmp_path / "empty")!r}, offline=True, quiet=True)
except FetchError as error:
    print(type(error).__name__, error.exit_code)
"""
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=60)
    assert result.stdout.splitlines() == [str(dest), "FetchError 4"], result.stderr


# --- yanked versions ---------------------------------------------------------------------------------


def test_a_yanked_version_downloads_with_a_warning(client_site, script, tmp_path):
    from releases import services
    from releases.models import Version

    services.yank_version(Version.objects.get(model__slug="index-tts", version="v2"), "Corrupt vocoder; use v1.")
    result = run(script, "index-tts", "v2", tmp_path / "cli")
    assert result.returncode == 0, result.stderr
    assert "fetch-model: warning: index-tts v2 is yanked: Corrupt vocoder; use v1.\n" in result.stderr
    assert "YankedVersionWarning" not in result.stderr
    program = f"""
import sys, warnings
sys.path.insert(0, {str(script.parent)!r})
from fetch_model import YankedVersionWarning, ensure_model
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    ensure_model("index-tts", "v2", {str(tmp_path / "lib")!r}, quiet=True)
print([(w.category.__name__, str(w.message)) for w in caught], issubclass(YankedVersionWarning, UserWarning))
"""
    lib = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=60)
    assert lib.stdout.strip() == (
        "[('YankedVersionWarning', 'index-tts v2 is yanked: Corrupt vocoder; use v1.')] True"
    ), lib.stderr


# --- subsets ------------------------------------------------------------------------------------------


def test_include_and_exclude_select_files_and_the_record_keeps_the_patterns(script, tmp_path, served):
    dest = tmp_path / "sub"
    result = run(script, "index-tts", "v2", dest, "--include", "*.yaml", "--include", "checkpoints/*",
                 "--exclude", "*.bin")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert tree(dest) == {"config.yaml": FILES["config.yaml"]}
    assert {entry["path"] for entry in served} == {"config.yaml"}
    lines = record_lines(dest)
    assert [line for line in lines if line.startswith(("include", "exclude"))] == [
        "include\t*.yaml", "include\tcheckpoints/*", "exclude\t*.bin"
    ]  # fmt: skip
    assert [line.rsplit("\t", 1)[1] for line in lines if line.startswith("file\t")] == ["config.yaml"]
    by_env = run(script, "index-tts", "v2", tmp_path / "env", env={"FETCH_MODEL_INCLUDE": "*/*:empty.txt"})
    assert by_env.returncode == 0 and set(tree(tmp_path / "env")) == {"checkpoints/vocoder.bin", "empty.txt"}


def test_patterns_that_select_nothing_are_a_usage_error(script, tmp_path):
    result = run(script, "index-tts", "v2", tmp_path / "none", "--include", "*.onnx")
    assert result.returncode == 1 and "usage: fetch_model.py" in result.stderr
    assert "no file of index-tts v2 matches" in result.stderr and not (tmp_path / "none").exists()


# --- one counted download per file and run ----------------------------------------------------------------


def test_each_file_is_asked_of_its_stable_url_once_per_run(client_site, publish, script, tmp_path, stable_gets):
    big = os.urandom(40 * 1024 * 1024)  # five segments
    publish("big", "v1", {"weights.bin": big, "small.txt": b"small"})
    result = run(script, "big", "v1", tmp_path / "out", "--connections", "3")
    assert result.returncode == 0, result.stderr
    for path in ("weights.bin", "small.txt"):
        asked = [(method, byte_range) for method, url, byte_range in stable_gets if url.endswith(f"/{path}")]
        assert asked == [("GET", f"bytes=0-{8 * 1024 * 1024 - 1 if path == 'weights.bin' else 4}")], asked
    assert (tmp_path / "out" / "weights.bin").read_bytes() == big


def test_an_expired_link_is_renewed_with_an_uncounted_head(
    client_site, publish, script, tmp_path, stable_gets, monkeypatch
):
    import time

    from releases import signing

    real_link, calls = signing.Signer.link, []

    def redirect_expired(self, key, filename, **kwargs):
        calls.append(key)
        if key == "big/v1/weights.bin" and calls.count(key) == 2:  # 1: the API's listing, 2: the redirect
            kwargs["now"] = time.time() - 10 * self.ttl
        return real_link(self, key, filename, **kwargs)

    monkeypatch.setattr(signing.Signer, "link", redirect_expired)
    big = os.urandom(20 * 1024 * 1024)
    publish("big", "v1", {"weights.bin": big})
    result = run(script, "big", "v1", tmp_path / "out", "--connections", "2")
    assert result.returncode == 0, result.stderr
    methods = [(method, byte_range) for method, _, byte_range in stable_gets]
    assert methods[0] == ("GET", f"bytes=0-{8 * 1024 * 1024 - 1}") and methods.count(("HEAD", None)) == 1, methods
    assert [m for m in methods if m[0] == "GET"] == [methods[0]]
    assert (tmp_path / "out" / "weights.bin").read_bytes() == big


# --- reuse -----------------------------------------------------------------------------------------------


def test_reuse_only_from_folders_a_client_filled(client_site, publish, script, tmp_path, served):
    shared = os.urandom(1_500_000)
    publish("tts", "v1", {"model.pt": shared})
    publish("tts", "v2", {"model.pt": shared, "extra.bin": b"x"})
    source = tmp_path / "models" / "src"  # a maintainer's working folder beside the versions
    source.mkdir(parents=True)
    (source / "model.pt").write_bytes(shared)
    first = run(script, "tts", "v1", tmp_path / "models" / "v1")
    assert first.returncode == 0 and ": reused" not in first.stderr and len(served) == 1
    served.clear()
    second = run(script, "tts", "v2", tmp_path / "models" / "v2")
    assert second.returncode == 0, second.stderr
    assert f"model.pt: reused {tmp_path / 'models' / 'v1' / 'model.pt'} (" in second.stderr
    assert [entry["path"] for entry in served] == ["extra.bin"]
    placed, origin = (os.stat(tmp_path / "models" / name / "model.pt") for name in ("v2", "v1"))
    assert not placed.st_mode & 0o222 and not stat.S_IMODE(origin.st_mode) & 0o222
    how = second.stderr.split("model.pt: reused ")[1].split("(")[1].split(")")[0]
    assert how in ("cloned", "hard-linked", "copied")
    assert (placed.st_ino == origin.st_ino) == (how == "hard-linked")
    assert (source / "model.pt").stat().st_nlink == 1  # never entangled with the maintainer's folder


# --- one rule for file names ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    ["ckpt:2024-01-01.yaml", "CON", "nul.txt", "COM1.bin", "COM0", "lpt0.txt", "COM\u00b9", "lpt\u00b3.bin", "aux/x",
     "a*b", "a?b", "a<b", "a>b", 'a"b', "a|b", "name.", "dir /x", "nul .txt", "x\x7f", "x\x1f", "c:x", "\\\\server",
     "a" * 1025, ""],
)  # fmt: skip
def test_the_publishing_rule_for_names_is_the_clients(path):
    client = load_client()
    with pytest.raises(client.WrongContent, match="refusing the unsafe path"):
        client.safe_relative_path(path)


@pytest.mark.parametrize("path", ["console.txt", "com10.bin", "lpt", "nul_x", "a" * 1024, "conf.d/x", "COM\u2074"])
def test_names_near_the_reserved_ones_are_accepted(path):
    assert load_client().safe_relative_path(path) == path


def test_a_folder_named_in_fetch_model_from_is_reused(client_site, publish, script, tmp_path, served):
    shared = os.urandom(1_000_000)
    publish("tts", "v1", {"model.pt": shared})
    mine = tmp_path / "mine"  # not a client's folder, not a sibling: named by the user
    mine.mkdir()
    (mine / "model.pt").write_bytes(shared)
    result = run(script, "tts", "v1", tmp_path / "models" / "v1", env={"FETCH_MODEL_FROM": f"{tmp_path / 'no'}:{mine}"})
    assert result.returncode == 0 and f"model.pt: reused {mine / 'model.pt'}" in result.stderr, result.stderr
    assert served == []


# --- the documented lines, with the site up and then down -------------------------------------------


def page_block(site, block_id):
    import html
    import re
    import urllib.request

    with urllib.request.urlopen(f"{site}/models/index-tts/v2/", timeout=10) as response:
        page = response.read().decode()
    return html.unescape(re.search(f'<pre id="{block_id}"><code>(.*?)</code></pre>', page, re.S).group(1))


def test_the_version_pages_python_lines_start_a_complete_copy_with_the_site_down(client_site, tmp_path):
    app = tmp_path / "app"
    app.mkdir()
    lines = page_block(client_site, "cmd-python")
    up = subprocess.run(["sh", "-c", lines], cwd=app, capture_output=True, text=True, timeout=120)
    assert up.returncode == 0, up.stderr
    assert tree(app / "checkpoints" / "index-tts" / "v2") == FILES
    dead = down()["MODEL_SITE"]
    offline = subprocess.run(["sh", "-c", lines.replace(client_site, dead)], cwd=app, capture_output=True, text=True,
                             timeout=120, env={**os.environ, "MODEL_SITE": dead})  # fmt: skip
    assert offline.returncode == 0, offline.stderr
    assert "fetch-model: cannot refresh the client; using the saved copy" in offline.stderr
    assert "fetch-model: warning: cannot reach" in offline.stderr and not (app / "fetch_model.py.new").exists()
    code = page_block(client_site, "cmd-ensure")
    for site in (client_site, dead):
        ensure = subprocess.run([sys.executable, "-c", code.replace(client_site, site) + "\nprint(model_dir)"],
                                cwd=app, capture_output=True, text=True, timeout=120)  # fmt: skip
        assert ensure.returncode == 0 and ensure.stdout.strip() == "checkpoints/index-tts/v2", ensure.stderr


def test_the_readmes_start_up_example_starts_with_the_site_down(client_site, tmp_path):
    import re

    from .servers import REPO_ROOT

    readme = (REPO_ROOT / "README.md").read_text()
    example = re.search(r"```python\n(# webui\.py\n.*?)```", readme, re.S).group(1)
    app = tmp_path / "app"
    app.mkdir()
    served_client(client_site, tmp_path).rename(app / "fetch_model.py")
    for site in (client_site, down()["MODEL_SITE"]):
        example_here = example.replace('"v23"', '"v2"').replace("https://models.example.org", site)
        (app / "webui.py").write_text("def launch(path):\n    print(path)\n\n\n" + example_here)
        result = subprocess.run([sys.executable, "webui.py"], cwd=app, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0 and result.stdout.strip() == "checkpoints/index-tts/v2", result.stderr
    assert "warning: cannot reach" in result.stderr
    assert tree(app / "checkpoints" / "index-tts" / "v2") == FILES
