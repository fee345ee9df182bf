"""The served shell client over the life of an install: later runs that read no file bytes, starts
with the site down or offline, yanked versions, the documented start-script lines, subsets, reuse,
and a fake hostile site and a full disk that must not push it past the published facts.

The client is the one gunicorn serves (`/fetch-model.sh`), run as a subprocess; the site is the
shipped gunicorn configuration on local storage, which a test may stop."""

import hashlib
import html
import os
import re
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from . import clients
from .clients import FILES
from .hostile_server import HostileSite

pytestmark = pytest.mark.django_db(transaction=True)

RECORD = ".fetch-model.record"


def tree(root):
    return {path: content for path, content in clients.tree(root).items() if path != RECORD}


class Site:
    """gunicorn serving the test's catalogue; `down()` stops it (the site is unreachable)."""

    def __init__(self, settings):
        from .servers import Gunicorn, django_env

        self.server = Gunicorn(django_env(STORAGE_BACKEND="local", DATA_DIR=settings.DATA_DIR))
        self.url = self.server.url
        self.running = True

    def down(self):
        if self.running:
            self.server.stop()
            self.running = False


@pytest.fixture
def site(settings, publish):
    publish("index-tts", "v1", {"model.pt": b"old weights"})
    publish("index-tts", "v2", FILES)
    running = Site(settings)
    yield running
    running.down()


@pytest.fixture
def script(site, tmp_path):
    """The client as the site serves it, saved."""
    path = tmp_path / "fetch-model.sh"
    subprocess.run(["curl", "-fsSL", "-o", str(path), f"{site.url}/fetch-model.sh"], check=True)
    return path


def run(script, *args, env=None, shell="sh", prefix=()):
    return subprocess.run(
        [*prefix, shell, str(script), *map(str, args)],
        capture_output=True, text=True, timeout=120, env={**os.environ, **(env or {})},
    )  # fmt: skip


def opened_files(script, dest, *args, env=None):
    """Run the client under strace: its result and the files of DEST_DIR any process opened."""
    log = dest.parent / f"{dest.name}.strace"
    result = run(script, *args, env=env, prefix=("strace", "-f", "-qq", "-e", "trace=open,openat", "-o", str(log)))
    opened = set()
    for line in log.read_text().splitlines():
        found = re.search(r'open(?:at)?\((?:AT_FDCWD, )?"([^"]+)"', line)
        if found and found.group(1).startswith(str(dest) + "/"):
            opened.add(found.group(1)[len(str(dest)) + 1 :])
    log.unlink()
    return result, opened


def read_files(script, dest, *args, env=None, watch=None):
    """Run the client under strace: its result and the files of `watch` whose bytes any process read
    (read, pread, readv, mmap, copy_file_range, sendfile: each names its file with -y)."""
    log = dest.parent / f"{dest.name}.reads"
    calls = "trace=read,pread64,readv,preadv,mmap,copy_file_range,sendfile"
    result = run(script, *args, env=env, prefix=("strace", "-f", "-qq", "-y", "-e", calls, "-o", str(log)))
    read = set()
    for line in log.read_text().splitlines():
        for path in re.findall(r"<(/[^<>]+)>", line):
            if path.startswith(str(watch) + "/"):
                read.add(path[len(str(watch)) + 1 :])
    log.unlink()
    return result, read


def record_lines(dest):
    return (dest / RECORD).read_text().splitlines()


def read_only(path):
    return not path.stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)


# --- the record and the quick check ------------------------------------------------------------


def test_the_record_then_a_later_run_opens_no_file_of_the_version(site, script, tmp_path):
    dest = tmp_path / "m" / "v2"
    first = run(script, "index-tts", "latest", dest)
    assert first.returncode == 0, first.stderr + site.server.log()
    lines = record_lines(dest)
    assert lines[0] == "fetch-model-record 1"
    header = dict(line.split("\t", 1) for line in lines[1:] if not line.startswith("file\t"))
    assert header["model"] == "index-tts" and header["requested"] == "latest" and header["version"] == "v2"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", header["verified"])
    assert header["client"] == "fetch-model.sh/1"
    files = [line.split("\t") for line in lines if line.startswith("file\t")]
    sums = subprocess.run(["curl", "-fsS", f"{site.url}/api/v1/models/index-tts/versions/v2/sha256sums"],
                          capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert [fields[6] for fields in files] == [line.split("  ", 1)[1] for line in sums.splitlines()]  # its order
    for _, size, sha, mtime, inode, ctime, path in files:
        facts = os.stat(dest / path)
        assert (int(size), sha, int(inode)) == (facts.st_size, hashlib.sha256(FILES[path]).hexdigest(), facts.st_ino)
        ns = lambda n: f"{n // 10**9}.{n % 10**9:09d}"  # noqa: E731
        assert (mtime, ctime) == (ns(facts.st_mtime_ns), ns(facts.st_ctime_ns))
        assert read_only(dest / path)  # made read-only before its facts were taken
    second, opened = opened_files(script, dest, "index-tts", "v2", dest)
    assert second.returncode == 0, second.stderr
    assert second.stderr.count("already there, verified at " + header["verified"]) == len(FILES)
    assert opened & set(FILES) == set()  # not one file of the version opened, let alone read
    assert tree(dest) == FILES


def test_verify_hashes_every_file_again(site, script, tmp_path):
    dest = tmp_path / "v2"
    assert run(script, "index-tts", "v2", dest).returncode == 0
    again, opened = opened_files(script, dest, "index-tts", "v2", dest, env={"FETCH_MODEL_VERIFY": "1"})
    assert again.returncode == 0, again.stderr
    assert opened >= set(FILES) and "verified at" not in again.stderr


def test_a_file_changed_in_place_with_its_mtime_put_back_is_caught_and_repaired(site, script, tmp_path):
    dest = tmp_path / "v2"
    assert run(script, "index-tts", "v2", dest).returncode == 0
    weights = dest / "checkpoints" / "vocoder.bin"
    before = weights.stat()
    weights.chmod(0o644)
    with open(weights, "r+b") as handle:  # same size, same inode, other bytes
        handle.write(b"bitrot")
    os.utime(weights, ns=(before.st_atime_ns, before.st_mtime_ns))  # only the ctime tells
    again = run(script, "index-tts", "v2", dest)
    assert again.returncode == 0, again.stderr
    assert "checkpoints/vocoder.bin: changed since it was verified; fetching it again" in again.stderr
    assert "checkpoints/vocoder.bin: downloaded, SHA-256 verified" in again.stderr
    assert tree(dest) == FILES and read_only(weights)
    assert run(script, "index-tts", "v2", dest).stderr.count("verified at") == len(FILES)  # recorded anew


def test_a_stat_without_nanoseconds_compares_whole_seconds(site, script, tmp_path):
    """BusyBox's or an old stat: `%.9Y` refused, so the record holds whole seconds (and nine zeros)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "stat").write_text('#!/bin/sh\ncase "$*" in *%.9*) exit 1 ;; esac\nexec /usr/bin/stat "$@"\n')
    (bin_dir / "stat").chmod(0o755)
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}"}
    dest = tmp_path / "v2"
    assert run(script, "index-tts", "v2", dest, env=env).returncode == 0
    mtimes = [line.split("\t")[3] for line in record_lines(dest) if line.startswith("file\t")]
    assert all(re.fullmatch(r"\d+\.000000000", mtime) for mtime in mtimes)
    again, opened = opened_files(script, dest, "index-tts", "v2", dest, env=env)
    assert again.returncode == 0 and opened & set(FILES) == set(), again.stderr


BSD_STAT = r"""#!/bin/sh
# stat as BSD and macOS spell it (-f, %z %Fm %Fc %Lp), played by GNU stat; -c is refused
[ "$1" = -L ] && [ "$2" = -f ] || exit 1
format=$(printf '%s' "$3" | sed 's/%z/%s/; s/%Fm/%.9Y/; s/%Fc/%.9Z/; s/%Lp/%a/; s/%m/%Y/; s/%c/%Z/')
shift 3
[ "$1" = -- ] && shift
exec /usr/bin/stat -L -c "$format" -- "$@"
"""


def test_a_bsd_stat_is_understood(site, script, tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "stat").write_text(BSD_STAT)
    (bin_dir / "stat").chmod(0o755)
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}"}
    dest = tmp_path / "v2"
    first = run(script, "index-tts", "v2", dest, env=env)
    assert first.returncode == 0, first.stderr
    files = [line.split("\t") for line in record_lines(dest) if line.startswith("file\t")]
    for fields in files:  # the same nanoseconds GNU stat gives
        ns = os.stat(dest / fields[6]).st_mtime_ns
        assert fields[3] == f"{ns // 10**9}.{ns % 10**9:09d}"
    again, opened = opened_files(script, dest, "index-tts", "v2", dest, env=env)
    assert again.returncode == 0 and opened & set(FILES) == set(), again.stderr


def test_an_unreadable_record_is_no_record(site, script, tmp_path):
    dest = tmp_path / "v2"
    assert run(script, "index-tts", "v2", dest).returncode == 0
    (dest / RECORD).chmod(0o644)
    (dest / RECORD).write_bytes(b"\xff\xfe garbage\n\tfile\t")
    again = run(script, "index-tts", "v2", dest)
    assert again.returncode == 0 and again.stderr.count("already there, verified\n") == len(FILES), again.stderr
    assert record_lines(dest)[0] == "fetch-model-record 1"


# --- the site down, and offline ----------------------------------------------------------------


@pytest.mark.parametrize("asked", ["v2", "latest"])
def test_with_the_site_down_a_complete_copy_starts_with_one_warning(site, script, tmp_path, asked):
    dest = tmp_path / "v2"
    assert run(script, "index-tts", asked, dest).returncode == 0
    site.down()
    down, opened = opened_files(script, dest, "index-tts", asked, dest)
    assert down.returncode == 0, down.stderr
    lines = down.stderr.splitlines()
    assert len(lines) == 1, down.stderr
    assert re.fullmatch(
        rf"fetch-model: warning: cannot reach {re.escape(site.url)} \(.+\); "
        r"using index-tts v2 as verified at \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ",
        lines[0],
    ), lines[0]
    assert opened & set(FILES) == set()


def test_with_the_site_down_a_folder_never_completed_exits_4_and_writes_nothing(site, script, tmp_path):
    site.down()
    fresh = run(script, "index-tts", "v2", tmp_path / "never", env={"FETCH_MODEL_RETRIES": "2"})
    assert fresh.returncode == 4 and "cannot reach" in fresh.stderr
    assert not (tmp_path / "never").exists()
    partial = tmp_path / "partial"  # files, but no record of a verified run
    partial.mkdir()
    (partial / "model.pt").write_bytes(FILES["model.pt"])
    result = run(script, "index-tts", "v2", partial, env={"FETCH_MODEL_RETRIES": "1"})
    # no record and no file written; only the run's report, kept for a run that reaches the site
    assert result.returncode == 4 and sorted(os.listdir(partial)) == [".fetch-model.report", "model.pt"]


def test_with_the_site_down_a_damaged_copy_is_not_used(site, script, tmp_path):
    dest = tmp_path / "v2"
    assert run(script, "index-tts", "v2", dest).returncode == 0
    (dest / "config.yaml").unlink()
    site.down()
    assert run(script, "index-tts", "v2", dest, env={"FETCH_MODEL_RETRIES": "1"}).returncode == 4


def test_offline_uses_the_verified_copy_without_the_network(site, script, tmp_path):
    dest = tmp_path / "v2"
    assert run(script, "index-tts", "latest", dest).returncode == 0
    site.down()
    offline = {"FETCH_MODEL_OFFLINE": "1"}
    result = run(script, "index-tts", "latest", dest, env=offline)
    assert result.returncode == 0 and result.stderr.startswith(
        "fetch-model: offline: using index-tts v2 as verified at"
    )
    assert len(result.stderr.splitlines()) == 1
    other = run(script, "index-tts", "v1", dest, env=offline)
    assert other.returncode == 4 and "index-tts v1 has no complete verified copy in" in other.stderr
    subset = run(script, "--include", "*.yaml", "index-tts", "v2", dest, env=offline)
    assert subset.returncode == 4  # the record covers the whole version, not this subset
    assert run(script, "index-tts", "v2", tmp_path / "nothing", env=offline).returncode == 4
    assert not (tmp_path / "nothing").exists()


def test_not_found_and_withdrawn_are_answers_not_downtime(site, script, tmp_path):
    from releases import services
    from releases.models import Version

    dest = tmp_path / "v1"
    assert run(script, "index-tts", "v1", dest).returncode == 0
    services.withdraw_version(Version.objects.get(model__slug="index-tts", version="v1"))
    withdrawn = run(script, "index-tts", "v1", dest)
    assert withdrawn.returncode == 3 and len(withdrawn.stderr.splitlines()) == 1, withdrawn.stderr
    assert run(script, "index-tts", "v9", tmp_path / "v9").returncode == 3


# --- yanked --------------------------------------------------------------------------------------


def test_a_yanked_version_downloads_with_a_warning_that_says_why(site, script, tmp_path):
    from releases import services
    from releases.models import Version

    reason = "Corrupt vocoder (100% sure); use v3 — sorry"
    services.yank_version(Version.objects.get(model__slug="index-tts", version="v2"), reason)
    result = run(script, "index-tts", "v2", tmp_path / "v2")
    assert result.returncode == 0, result.stderr
    assert f"fetch-model: warning: index-tts v2 is yanked: {reason}\n" in result.stderr
    assert tree(tmp_path / "v2") == FILES
    plain = run(script, "index-tts", "v1", tmp_path / "v1")
    assert plain.returncode == 0 and "is yanked" not in plain.stderr


def test_the_sums_answer_names_the_status_and_the_yank_reason(client, publish):
    from releases import services

    version = publish("m", "v1", {"a.bin": b"a"})
    url = "/api/v1/models/m/versions/v1/sha256sums"
    assert client.get(url)["X-Artifact-Status"] == "published" and "X-Artifact-Yanked-Reason" not in client.get(url)
    services.yank_version(version, "bad: see ü\nnotes")
    response = client.get(url)
    assert response["X-Artifact-Status"] == "yanked"
    assert response["X-Artifact-Yanked-Reason"] == "bad%3A%20see%20%C3%BC%0Anotes"


# --- the documented start-script lines -----------------------------------------------------------


def start_block(site):
    page = subprocess.run(["curl", "-fsS", f"{site.url}/models/index-tts/v2/"], capture_output=True, text=True)
    block = re.search(r'<pre id="cmd-start"><code>(.*?)</code></pre>', page.stdout, re.S).group(1)
    return html.unescape(block)


@pytest.mark.parametrize("shell", ["bash", "sh"])
def test_the_version_pages_start_lines_work_with_the_site_up_then_down(site, tmp_path, shell):
    lines = start_block(site)
    assert "set -e" not in lines  # pasted into a terminal, a failure must not close it
    up = subprocess.run([shell, "-c", lines], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert up.returncode == 0, up.stderr
    assert tree(tmp_path / "checkpoints" / "index-tts" / "v2") == {**FILES, ".fetch-model.sh": clients_sh(site)}
    site.down()
    down = subprocess.run([shell, "-c", lines], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert down.returncode == 0, down.stderr
    assert "fetch-model: cannot refresh the client; using the saved copy" in down.stderr
    assert "fetch-model: warning: cannot reach" in down.stderr


def test_the_version_pages_subset_lines_fetch_only_the_files_they_name(site, tmp_path):
    page = subprocess.run(["curl", "-fsS", f"{site.url}/models/index-tts/v2/"], capture_output=True, text=True)
    shell_line, python_line = html.unescape(
        re.search(r'<pre id="cmd-subset"><code>(.*?)</code></pre>', page.stdout, re.S).group(1)
    ).splitlines()
    assert "--include '*.bin'" in shell_line and python_line.endswith("--include '*.bin'")
    setup = "\n".join(start_block(site).splitlines()[:2])  # MODEL_DIR and the saved client
    run_sh = subprocess.run(["sh", "-c", f"{setup}\n{shell_line}"], cwd=tmp_path, capture_output=True, text=True)
    assert run_sh.returncode == 0, run_sh.stderr
    wanted = {"checkpoints/vocoder.bin": FILES["checkpoints/vocoder.bin"]}
    assert tree(tmp_path / "checkpoints" / "index-tts" / "v2") == {**wanted, ".fetch-model.sh": clients_sh(site)}
    served = subprocess.run(["curl", "-fsS", f"{site.url}/fetch_model.py"], capture_output=True, check=True).stdout
    (tmp_path / "py").mkdir()
    (tmp_path / "py" / "fetch_model.py").write_bytes(served)
    run_py = subprocess.run(
        ["sh", "-c", python_line.replace("python3", sys.executable, 1)], cwd=tmp_path / "py",
        capture_output=True, text=True, env={**os.environ, "FETCH_MODEL_NO_REPORT": "1"},
    )  # fmt: skip
    assert run_py.returncode == 0, run_py.stderr
    assert tree(tmp_path / "py" / "checkpoints" / "index-tts" / "v2") == wanted


def clients_sh(site):
    return subprocess.run(["curl", "-fsS", f"{site.url}/fetch-model.sh"], capture_output=True, check=True).stdout


def test_a_failure_of_the_pasted_lines_does_not_close_an_interactive_shell(site, tmp_path):
    site_page = start_block(site)
    lines = site_page.replace("index-tts", "index-ttz")  # a typo in the model name
    session = subprocess.run(
        ["bash", "--norc", "-i"], input=lines + "\necho still-here $?\n", cwd=tmp_path,
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert "still-here 3" in session.stdout, session.stderr
    site.down()  # and a folder never completed: the client fails, the shell stays
    session = subprocess.run(
        ["bash", "--norc", "-i"], input=site_page + "\necho still-here $?\n", cwd=tmp_path,
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert re.search(r"still-here [1-9]", session.stdout), session.stderr  # failed, and the shell went on


def readme_block(after: str, language: str) -> str:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme[readme.index(after) :]
    return re.search(rf"```{language}\n(.*?)```", section, re.S).group(1)


def test_the_readmes_start_app_sh_starts_the_app_with_the_site_up_then_down(site, tmp_path):
    app = tmp_path / "app"
    app.mkdir()
    start = app / "start_app.sh"
    start.write_text(readme_block("A complete `start_app.sh`", "bash"))
    (app / "webui.py").write_text("import sys; print('webui', *sys.argv[1:])\n")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").symlink_to(subprocess.run(["which", "python3"], capture_output=True, text=True).stdout.strip())
    env = {**os.environ, "MODEL_SITE": site.url, "MODEL_VERSION": "v2", "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    up = subprocess.run(["bash", str(start)], capture_output=True, text=True, env=env, timeout=120)
    assert up.returncode == 0 and "webui --model-dir" in up.stdout, up.stderr
    model_dir = re.search(r"--model-dir (\S+)", up.stdout).group(1)
    assert tree(app / model_dir) == {**FILES, ".fetch-model.sh": clients_sh(site)}
    site.down()
    down = subprocess.run(["bash", str(start)], capture_output=True, text=True, env=env, timeout=120)
    assert down.returncode == 0 and "webui --model-dir" in down.stdout, down.stderr
    assert "warning: cannot reach" in down.stderr
    fresh = subprocess.run(["bash", str(start)], capture_output=True, text=True, timeout=120,
                           env={**env, "MODEL_VERSION": "v1", "FETCH_MODEL_RETRIES": "1"})  # fmt: skip
    assert fresh.returncode != 0 and "webui" not in fresh.stdout  # never completed: the app does not start


def test_the_readmes_three_lines_are_the_version_pages(site):
    readme = readme_block("## Using it from a start script", "sh")
    page = start_block(site)
    assert readme.strip() == page.replace(site.url, "https://models.example.org").replace("v2", "v23").strip()


# --- subsets --------------------------------------------------------------------------------------


def test_include_and_exclude_fetch_a_subset_and_the_record_covers_it(site, script, tmp_path):
    dest = tmp_path / "v2"
    result = run(
        script, "--include", "*.bin", "--include=*.yaml", "--exclude", "checkpoints/*", "index-tts", "v2", dest
    )
    assert result.returncode == 0, result.stderr
    assert tree(dest) == {"config.yaml": FILES["config.yaml"]}
    lines = record_lines(dest)
    assert [line for line in lines if line.split("\t")[0] in ("include", "exclude")] == [
        "include\t*.bin", "include\t*.yaml", "exclude\tcheckpoints/*",
    ]  # fmt: skip
    assert [line.split("\t")[-1] for line in lines if line.startswith("file\t")] == ["config.yaml"]
    from_env = run(script, "index-tts", "v2", tmp_path / "env",
                   env={"FETCH_MODEL_INCLUDE": "model.pt:*/*.bin", "FETCH_MODEL_EXCLUDE": "*.txt"})  # fmt: skip
    assert from_env.returncode == 0, from_env.stderr
    assert sorted(tree(tmp_path / "env")) == ["checkpoints/vocoder.bin", "model.pt"]
    none = run(script, "--include", "*.onnx", "index-tts", "v2", tmp_path / "none")
    assert none.returncode == 1 and not (tmp_path / "none").exists()
    assert (
        none.stderr.splitlines()[0] == "fetch-model: no file of index-tts v2 matches the --include/--exclude patterns"
    )
    assert none.stderr.count("\n") == 2 and "FETCH_MODEL_NO_REPORT=1" in none.stderr  # then, once, the report notice


# --- reuse ----------------------------------------------------------------------------------------


def test_reuse_from_a_named_folder_places_read_only_files(site, script, tmp_path):
    old = tmp_path / "elsewhere"
    assert run(script, "index-tts", "v2", old).returncode == 0
    dest = tmp_path / "v2"
    result, read = read_files(script, dest, "index-tts", "v2", dest, env={"FETCH_MODEL_FROM": str(old)}, watch=old)
    assert result.returncode == 0, result.stderr
    assert read & set(FILES) == set()  # its record vouches for the old folder's files: not one byte read
    assert result.stderr.count(": reused ") == len(FILES)
    assert tree(dest) == FILES
    assert all(read_only(dest / path) for path in FILES)
    assert not (dest / ".model.pt.reuse").exists()


@pytest.fixture
def localstack_site(settings, localstack_endpoint, publish):
    """gunicorn with its release storage on LocalStack's S3, which checks every signature."""
    import uuid

    import boto3

    from releases import signing

    from .servers import Gunicorn, django_env

    keys = {"access_key": "test", "secret_key": "test"}
    bucket = f"releases-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=localstack_endpoint, region_name="us-east-1", aws_access_key_id="test",
                 aws_secret_access_key="test").create_bucket(Bucket=bucket)  # fmt: skip
    settings.RELEASE_STORAGE = {"BACKEND": "s3", "OPTIONS": {"bucket_name": bucket, "endpoint_url": localstack_endpoint,
                                "region_name": "us-east-1", "addressing_style": "path", **keys}}  # fmt: skip
    signing.SIGNER.set(None)
    publish("index-tts", "v2", FILES)
    server = Gunicorn(django_env(
        STORAGE_BACKEND="s3", AWS_STORAGE_BUCKET_NAME=bucket, AWS_S3_ENDPOINT_URL=localstack_endpoint,
        AWS_S3_REGION_NAME="us-east-1", AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test",
    ))  # fmt: skip
    yield server
    server.stop()
    signing.SIGNER.set(None)


def test_on_localstacks_s3_a_later_run_and_a_start_with_the_site_down(localstack_site, tmp_path):
    script = tmp_path / "fetch-model.sh"
    subprocess.run(["curl", "-fsSL", "-o", str(script), f"{localstack_site.url}/fetch-model.sh"], check=True)
    dest = tmp_path / "v2"
    first = run(script, "index-tts", "v2", dest)
    assert first.returncode == 0, first.stderr + localstack_site.log()
    assert tree(dest) == FILES
    again, opened = opened_files(script, dest, "index-tts", "v2", dest)
    assert again.returncode == 0 and opened & set(FILES) == set(), again.stderr
    localstack_site.stop()
    localstack_site.stop = lambda: None  # stopped here already
    down = run(script, "index-tts", "v2", dest)
    assert down.returncode == 0 and down.stderr.startswith("fetch-model: warning: cannot reach"), down.stderr


# --- a hostile site ------------------------------------------------------------------------------

SIZE = 2 * 1024 * 1024
WEIGHTS = {"weights.bin": os.urandom(SIZE), "config.yaml": b"a: 1\n"}


@pytest.fixture
def hostile():
    server = HostileSite(WEIGHTS)
    yield server
    server.stop()


def hostile_run(script, server, dest, **env):
    return run(script, "m", "v1", dest, env={"MODEL_SITE": server.url, "FETCH_MODEL_RETRIES": "3", **env})


def watch_largest(path):
    """Sample a part file's size while a run goes on: the largest size seen, for the caller's check."""
    seen, stop = {"largest": 0}, threading.Event()

    def sample():
        while not stop.is_set():
            try:
                seen["largest"] = max(seen["largest"], path.stat().st_size)
            except FileNotFoundError:
                pass
            stop.wait(0.002)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    return seen, lambda: (stop.set(), thread.join())


@pytest.mark.parametrize("body", ["endless", "longer"])
def test_a_body_past_the_published_size_is_a_wrong_body_never_written_and_never_progress(
    script, hostile, tmp_path, body
):
    hostile.body = body
    dest = tmp_path / "d"
    seen, done = watch_largest(dest / ".weights.bin.part")
    result = hostile_run(script, hostile, dest)
    done()
    assert result.returncode == 5, result.stderr
    assert "weights.bin: the server sent more than the published 2097152 bytes" in result.stderr
    assert len(hostile.file_gets("/models/m/v1/weights.bin")) == 3  # the tries did not start afresh
    assert seen["largest"] <= SIZE
    assert not (dest / ".weights.bin.part").exists() and not (dest / "weights.bin").exists()


@pytest.mark.parametrize("location", ["file:///etc/passwd", "gopher://127.0.0.1:70/x", "ftp://127.0.0.1/x"])
def test_redirects_leave_http_only_to_https(script, hostile, tmp_path, location):
    hostile.body, hostile.location = "redirect", location
    result = hostile_run(script, hostile, tmp_path / "d")
    assert result.returncode == 4, result.stderr
    assert "not supported or disabled" in result.stderr
    assert not (tmp_path / "d" / "weights.bin").exists()


def test_an_https_site_never_redirects_to_http(script, tmp_path):
    plain = HostileSite(WEIGHTS)
    secure = HostileSite(WEIGHTS, tls=True)
    try:
        secure.body, secure.location = "redirect", f"{plain.url}/models/m/v1/weights.bin"
        result = run(script, "m", "v1", tmp_path / "d", env={
            "MODEL_SITE": secure.url, "FETCH_MODEL_RETRIES": "2", "FETCH_MODEL_CURL_OPTS": f"--cacert {secure.cafile}",
        })  # fmt: skip
        assert result.returncode == 4, result.stderr
        assert plain.file_gets("/models/m/v1/weights.bin") == []  # never followed
        secure.body = "right"
        assert run(script, "m", "v1", tmp_path / "d", env={
            "MODEL_SITE": secure.url, "FETCH_MODEL_CURL_OPTS": f"--cacert {secure.cafile}",
        }).returncode == 0  # fmt: skip
    finally:
        plain.stop()
        secure.stop()


def test_a_server_that_ignores_range_restarts_the_file_from_zero(script, hostile, tmp_path):
    dest = tmp_path / "d"
    dest.mkdir()
    (dest / ".weights.bin.part").write_bytes(WEIGHTS["weights.bin"][:1000])
    hostile.body = "ignore range"
    result = hostile_run(script, hostile, dest)
    assert result.returncode == 0, result.stderr
    assert tree(dest) == WEIGHTS
    assert [seen.range for seen in hostile.file_gets("/models/m/v1/weights.bin")] == ["bytes=1000-", None]


@pytest.mark.parametrize(
    "sums",
    [b"not a sums file\n", b"abc  weights.bin\n", b"Z" * 64 + b"  weights.bin\n", b"0" * 64 + b" weights.bin\n"],
)
def test_a_malformed_sums_line_exits_4_with_one_line(script, hostile, tmp_path, sums):
    hostile.sums = sums
    result = hostile_run(script, hostile, tmp_path / "d")
    assert result.returncode == 4 and "malformed line 1" in result.stderr
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert not (tmp_path / "d").exists()


def test_an_endless_sums_answer_is_cut_at_its_cap(script, hostile, tmp_path):
    hostile.endless_sums = True
    result = hostile_run(script, hostile, tmp_path / "d")
    assert result.returncode == 4 and "larger than 16777216 bytes" in result.stderr
    assert len(result.stderr.splitlines()) == 1 and not (tmp_path / "d").exists()


def test_a_site_answering_503_after_the_retries_is_down_for_a_complete_copy(script, hostile, tmp_path):
    dest = tmp_path / "d"
    assert hostile_run(script, hostile, dest).returncode == 0
    hostile.sums_status = 503
    result = hostile_run(script, hostile, dest, FETCH_MODEL_RETRIES="2")
    assert result.returncode == 0, result.stderr
    assert result.stderr.startswith(f"fetch-model: warning: cannot reach {hostile.url} (HTTP 503); using m v1 as")
    assert len([seen for seen in hostile.requests if seen.path.endswith("/sha256sums")]) == 1 + 2  # retried first
    never = hostile_run(script, hostile, tmp_path / "never", FETCH_MODEL_RETRIES="1")
    assert never.returncode == 4 and not (tmp_path / "never").exists()


def test_a_failed_run_leaves_the_previous_record_as_it_was(script, hostile, tmp_path):
    dest = tmp_path / "d"
    assert hostile_run(script, hostile, dest).returncode == 0
    record = (dest / RECORD).read_bytes()
    (dest / "weights.bin").unlink()
    hostile.body = "endless"
    assert hostile_run(script, hostile, dest).returncode == 5
    assert (dest / RECORD).read_bytes() == record
    assert not list(dest.glob(".fetch-model.record.*"))  # no temporary record left behind


def test_a_site_that_never_answers_does_not_hold_up_a_complete_copy_for_long(script, hostile, tmp_path):
    dest = tmp_path / "d"
    assert hostile_run(script, hostile, dest).returncode == 0
    hostile.silent_sums = True
    result = hostile_run(script, hostile, dest)  # curl alone would wait a minute (--speed-time 60)
    assert result.returncode == 0, result.stderr
    assert result.stderr.startswith(f"fetch-model: warning: cannot reach {hostile.url} (Operation timed out")


@pytest.mark.parametrize("path", ["a\tb.bin", "../escape.bin", "/etc/x", "a/\x01.bin"])
def test_an_unsafe_path_in_the_sums_is_refused_before_anything_is_written(script, hostile, tmp_path, path):
    hostile.sums = f"{'0' * 64}  {path}\n".encode()
    result = hostile_run(script, hostile, tmp_path / "d")
    assert result.returncode == 5 and "refusing the unsafe path" in result.stderr
    assert not (tmp_path / "d").exists()


# --- a full disk ---------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path):
    """A tmpfs of the test's own (the tests run as root), mounted and unmounted by it."""
    mounted = []

    def mount(size: str) -> Path:
        where = tmp_path / f"disk-{len(mounted)}"
        where.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], check=True)
        mounted.append(where)
        return where

    yield mount
    for where in mounted:
        subprocess.run(["umount", str(where)], check=True)


def test_not_enough_free_space_exits_6_before_a_byte_is_downloaded(script, hostile, small_disk):
    disk = small_disk("8m")
    result = hostile_run(script, hostile, disk / "d")
    assert result.returncode == 6, result.stderr
    assert re.search(
        r"fetch-model: not enough free space in .*/d: 66\.0 MiB needed \(2\.0 MiB to download \+ margin\), 8\.0 MiB free",
        result.stderr,
    ), result.stderr
    assert hostile.file_gets("/models/m/v1/weights.bin") == []
    assert sorted(os.listdir(disk / "d")) == []


def test_a_disk_that_fills_up_mid_download_exits_6_and_removes_the_part(script, hostile, small_disk):
    disk = small_disk("72m")

    def fill_the_disk(path):
        if path == "weights.bin":
            free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
            with open(disk / "filler", "wb") as filler:
                filler.truncate(0)
                filler.write(b"\0" * (free - 512 * 1024))  # room for a quarter of the file

    hostile.on_get = fill_the_disk
    result = hostile_run(script, hostile, disk / "d")
    assert result.returncode == 6, result.stderr
    assert "weights.bin: no space left on device in" in result.stderr
    assert not (disk / "d" / ".weights.bin.part").exists() and not (disk / "d" / "weights.bin").exists()
    assert len(hostile.file_gets("/models/m/v1/weights.bin")) == 1  # no retries against a full disk
