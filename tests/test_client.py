"""The served start-script client, run for real: `curl <site>/fetch-model.sh | sh -s -- ...`
under dash and bash against the live test server."""

import os
import shutil
import signal
import subprocess
import time

import pytest

from releases.views import operations

from . import clients
from .clients import FILES, WRONG_BODIES, run_process
from .servers import wait_until

pytestmark = pytest.mark.django_db(transaction=True)

SHELLS = ["dash", "bash"]  # make test installs dash
RECORD = ".fetch-model.record"
# What the shell client says where it differs from the shared wording: a body announced longer
# than the file is refused before a byte of it is read.
SAYS = {"long": "the server sends 20 bytes where 19 are missing (the site publishes 19)"}


def tree(root):
    """Every file under root and its bytes, but the client's record."""
    return {path: content for path, content in clients.tree(root).items() if path != RECORD}


def run_client(site, shell, *args, env=None, wait=True):
    command = f'curl -fsSL "{site}/fetch-model.sh" | {shell} -s -- ' + " ".join(f'"{a}"' for a in args)
    return run_process(["sh", "-c", command], env=env, wait=wait)


@pytest.mark.parametrize("shell", SHELLS)
def test_fresh_download_then_nothing_to_do(client_site, shell, tmp_path, served):
    dest = tmp_path / "models" / "index tts" / "v2"  # a space in DEST_DIR
    first = run_client(client_site, shell, "index-tts", "latest", dest)
    assert first.returncode == 0, first.stderr
    assert "fetch-model: index-tts latest is v2" in first.stderr
    assert tree(dest) == FILES
    assert sum(entry["bytes"] for entry in served) == sum(len(c) for c in FILES.values())
    served.clear()
    second = run_client(client_site, shell, "index-tts", "v2", dest)
    assert second.returncode == 0, second.stderr
    assert second.stderr.count("already there, verified") == len(FILES)
    assert served == []  # not one file byte sent again
    assert tree(dest) == FILES


def test_a_corrupted_local_file_is_replaced(client_site, tmp_path):
    dest = tmp_path / "v2"
    assert run_client(client_site, "sh", "index-tts", "v2", dest).returncode == 0
    (dest / "checkpoints" / "vocoder.bin").write_bytes(b"bitrot" * 10)
    again = run_client(client_site, "sh", "index-tts", "v2", dest)
    assert again.returncode == 0 and "checkpoints/vocoder.bin: downloaded, SHA-256 verified" in again.stderr
    assert tree(dest) == FILES


def test_an_interrupted_download_resumes_with_range(client_site, tmp_path, slow_link, served):
    dest = tmp_path / "v2"
    part = dest / ".model.pt.part"
    slow = run_client(client_site, "sh", "index-tts", "v2", dest, wait=False)
    try:
        wait_until(lambda: part.exists() and part.stat().st_size > 300_000, 60, what="half a download")
    except AssertionError:
        os.killpg(slow.pid, signal.SIGKILL)
        raise AssertionError(slow.communicate()) from None
    os.killpg(slow.pid, signal.SIGKILL)  # the connection drops mid-file
    slow.wait(10)
    cut_at = part.stat().st_size
    assert 0 < cut_at < len(FILES["model.pt"]) and not (dest / "model.pt").exists()
    slow_link["slow"] = False  # the link is fast again
    served.clear()
    resumed = run_client(client_site, "sh", "index-tts", "v2", dest)
    assert resumed.returncode == 0, resumed.stderr
    assert f"model.pt: resuming at {cut_at} bytes" in resumed.stderr
    model = [entry for entry in served if entry["path"] == "model.pt"]
    assert model == [{"path": "model.pt", "range": f"bytes={cut_at}-", "bytes": len(FILES["model.pt"]) - cut_at}]
    assert tree(dest) == FILES


def test_an_expired_link_is_replaced_by_a_fresh_one(client_site, tmp_path, monkeypatch):
    from releases import signing

    real_link, calls = signing.Signer.link, []

    def first_link_already_expired(self, key, filename, **kwargs):
        calls.append(key)
        if len(calls) == len(FILES) + 1:  # after a HEAD of each file, the first GET
            kwargs["now"] = time.time() - 10 * self.ttl  # minted long ago: expired on arrival
        return real_link(self, key, filename, **kwargs)

    monkeypatch.setattr(signing.Signer, "link", first_link_already_expired)
    result = run_client(client_site, "sh", "index-tts", "v2", tmp_path / "v2")
    assert result.returncode == 0, result.stderr
    assert "asking the stable URL for a fresh link" in result.stderr
    assert tree(tmp_path / "v2") == FILES


@pytest.mark.parametrize("kind", WRONG_BODIES)
def test_a_wrong_body_once_is_retried_with_a_fresh_link(client_site, tmp_path, wrong_body, kind):
    wrong_body.update(body=WRONG_BODIES[kind], times=1)
    result = run_client(client_site, "dash", "index-tts", "v2", tmp_path / "v2")
    assert result.returncode == 0, result.stderr
    assert (
        f"config.yaml: {SAYS.get(kind, WRONG_BODIES[kind][2])}" in result.stderr
        and "asking the stable URL for a fresh link" in result.stderr
    )
    assert tree(tmp_path / "v2") == FILES and wrong_body["served"] == 1


@pytest.mark.parametrize("kind", WRONG_BODIES)
@pytest.mark.parametrize("shell", SHELLS)
def test_a_wrong_body_every_time_exits_5_after_the_retries_and_keeps_nothing(
    client_site, tmp_path, wrong_body, shell, kind
):
    wrong_body.update(body=WRONG_BODIES[kind], times=10**6)
    result = run_client(client_site, shell, "index-tts", "v2", tmp_path / "v2", env={"FETCH_MODEL_RETRIES": "3"})
    assert result.returncode == 5, result.stderr
    assert wrong_body["served"] == 3  # bounded: exactly FETCH_MODEL_RETRIES tries
    assert "config.yaml: giving up after 3 tries" in result.stderr
    landed = tree(tmp_path / "v2")
    assert "config.yaml" not in landed and ".config.yaml.part" not in landed
    assert landed["model.pt"] == FILES["model.pt"]  # the other files are fine


def test_an_object_corrupted_in_storage_fails_and_leaves_nothing(client_site, tmp_path, local_store):
    import io

    local_store.upload(
        "index-tts/v2/model.pt", io.BytesIO(os.urandom(len(FILES["model.pt"]))), content_type="application/octet-stream"
    )
    result = run_client(client_site, "sh", "index-tts", "v2", tmp_path / "v2", env={"FETCH_MODEL_RETRIES": "2"})
    assert result.returncode == 5
    assert "model.pt: SHA-256 mismatch" in result.stderr and "model.pt: giving up after 2 tries" in result.stderr
    assert "model.pt: FAILED" in result.stderr
    assert not (tmp_path / "v2" / "model.pt").exists() and not (tmp_path / "v2" / ".model.pt.part").exists()
    assert (tmp_path / "v2" / "config.yaml").read_bytes() == FILES["config.yaml"]  # the others are fine


@pytest.mark.parametrize("model, version, status", [("nope", "v1", 3), ("index-tts", "v9", 3), ("Bad Name", "v1", 3)])
def test_unknown_model_or_version_exits_with_one_line_and_writes_nothing(client_site, tmp_path, model, version, status):
    result = run_client(client_site, "sh", model, version, tmp_path / "dest")
    assert result.returncode == status
    *notice, error = result.stderr.strip().splitlines()
    assert ("Its versions" if model == "index-tts" else "no model") in error, error
    # A known model's 404 names the report URL: the run is reported, and a first one says so first.
    assert [("reports how each run ends" in line) for line in notice] == ([True] if model == "index-tts" else [])
    assert not (tmp_path / "dest").exists()


def test_usage_and_an_unreachable_site(tmp_path):
    from .servers import free_port

    script = operations.CLIENT_SOURCE.read_text()
    usage = subprocess.run(["sh", "-s", "--", "only-one-arg"], input=script, capture_output=True, text=True)
    assert usage.returncode == 1 and "usage: fetch-model.sh MODEL VERSION DEST_DIR" in usage.stderr
    down = subprocess.run(
        ["sh", "-s", "--", "m", "v1", str(tmp_path / "d")],
        input=script, capture_output=True, text=True,
        env={**os.environ, "MODEL_SITE": f"http://127.0.0.1:{free_port()}", "FETCH_MODEL_RETRIES": "1"},
    )  # fmt: skip
    assert down.returncode == 4 and "cannot reach" in down.stderr


def test_two_runs_on_one_dest_take_turns(client_site, tmp_path, slow_link):
    dest = tmp_path / "v2"
    runs = [run_client(client_site, "sh", "index-tts", "v2", dest, wait=False) for _ in range(2)]
    results = [process.communicate(timeout=120) for process in runs]
    assert [process.returncode for process in runs] == [0, 0], results
    assert any("another fetch-model run is working" in err for _, err in results)
    assert tree(dest) == FILES
    assert not (dest / ".fetch-model.lock").exists()


def test_the_script_is_served_with_the_site_address_and_is_cacheable(client, settings):
    response = client.get("/fetch-model.sh")
    assert response["Content-Type"] == "text/x-shellscript; charset=utf-8"
    assert "public" in response["Cache-Control"]
    assert "SITE=${MODEL_SITE:-'http://testserver'}" in response.content.decode()
    settings.SITE_URL = "https://models.example.org"
    assert "SITE=${MODEL_SITE:-'https://models.example.org'}" in client.get("/fetch-model.sh").content.decode()


def test_the_script_is_shellcheck_clean():
    assert shutil.which("shellcheck"), "make test installs shellcheck (scripts/ensure-services.sh)"
    result = subprocess.run(["shellcheck", "-s", "sh", str(operations.CLIENT_SOURCE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


@pytest.mark.parametrize("hasher", ["sha256sum", "shasum"])
def test_needs_only_curl_a_sha256_tool_and_posix_utilities(client_site, tmp_path, hasher):
    """A PATH with curl, one hashing tool and the POSIX basics: no openssl, python or jq."""
    tools = ["sh", "dash", "curl", hasher, "cut", "tr", "sed", "awk", "od", "tee", "cat", "mkdir", "rm", "mv",
             "mktemp", "dirname", "basename", "wc", "tail", "sleep", "head", "stat", "chmod", "date", "sort", "df",
             "grep", "cp", "ln"]  # fmt: skip
    if hasher == "shasum" and not shutil.which("shasum"):
        pytest.fail("shasum (Debian: perl) is expected on this machine")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in tools:
        (bin_dir / tool).symlink_to(shutil.which(tool))
    script = subprocess.run(["curl", "-fsSL", f"{client_site}/fetch-model.sh"], capture_output=True, check=True).stdout
    result = subprocess.run(
        [str(bin_dir / "sh"), "-s", "--", "index-tts", "v2", str(tmp_path / "v2")],
        input=script, capture_output=True, env={"PATH": str(bin_dir), "HOME": str(tmp_path)},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr.decode()
    assert tree(tmp_path / "v2") == FILES


@pytest.mark.parametrize("shell", SHELLS)
def test_files_in_the_from_folders_are_reused_not_downloaded(client_site, shell, tmp_path, served):
    old = tmp_path / "v2-elsewhere"
    assert run_client(client_site, shell, "index-tts", "v2", old).returncode == 0
    (old / "config.yaml").write_bytes(b"edited by hand\n")  # same path, other bytes: not reused
    served.clear()
    dest = tmp_path / "v2"
    result = run_client(
        client_site, shell, "index-tts", "v2", dest, env={"FETCH_MODEL_FROM": f"{tmp_path / 'missing'}:{old}"}
    )
    assert result.returncode == 0, result.stderr
    assert f"model.pt: reused {old / 'model.pt'}, SHA-256 verified" in result.stderr
    assert "config.yaml: downloaded, SHA-256 verified" in result.stderr
    assert [entry["path"] for entry in served] == ["config.yaml"]  # the only file bytes sent
    assert tree(dest) == FILES
