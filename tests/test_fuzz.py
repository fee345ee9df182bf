"""Schemathesis against the live test server: every API operation, generated inputs, every check
(no 5xx, responses conform to the OpenAPI document, status codes and content types as declared);
and a fuzzed set of query strings against every public page, feed, file and API URL."""

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from django.db import connection

from .data import WEIGHTS

pytestmark = pytest.mark.django_db(transaction=True)


def test_the_api_survives_fuzzing_and_matches_its_schema(live_server, catalogue, tmp_path):
    schemathesis = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
    result = subprocess.run(
        [
            schemathesis, "--config-file", str(Path(__file__).with_name("schemathesis.toml")),
            "run", f"{live_server.url}/api/openapi.json",
            "--url", live_server.url,
            "--checks", "all",
            "--max-examples", "40",
            "--seed", "20261125",
            "--report-dir", str(tmp_path),
        ],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "No issues found" in result.stdout


# --- every public URL, any query string ------------------------------------------------------------

# What visitors, scanners and broken clients put after the '?'. WSGI hands the server the raw bytes
# as Latin-1 text, so a raw byte is written here as the character with its code.
FUZZED_QUERIES = [
    "q=%00", "q=a%00b", "tag=%00", "sort=%00", "q=%00&tag=%00&sort=%00", "tag=a%00b", "sort=name%00",
    "q=%01%1f%7f%c2%85%c2%9f", "tag=%0d%0aSet-Cookie:%20x=1", "q=%09%0b%0c",
    "q=%ed%a0%80", "tag=%ed%b0%80", "q=%uD800", "q=\\ud800", "sort=%ed%a0%80",  # lone surrogates
    "q=%ff", "tag=%ff%fe", "sort=%c0%80", "q=%e0%80%80", "q=%f8%88%80%80%80", "q=\xff\xfe", "tag=\x80",
    "q=" + "a" * 100_000, "tag=" + "%00" * 20_000, "q=" + "%ed%a0%80" * 5_000, "sort=" + "x" * 10_000,
    "&".join(["tag=%00"] * 500), "q=a&q=%00&q=b&tag=x&tag=%00", "sort=name&sort=%00&sort=downloads",
    "sort=99999999999999999999999999999999", "page=1e308", "page=-1", "limit=18446744073709551617",
    "expires=" + "9" * 400 + "&signature=x", "expires=-1&signature=%00", "offset=NaN&size=Infinity",
    "%", "q=%", "q=%zz", "=&=&", "&&&", "q", "q[]=1&tag[]=%00", "q=%2500", "%00=%00", "q=%F0%9F%99%82",
    "callback=%3Cscript%3E", "sort=latest", "sort=downloads&q=tts",
]  # fmt: skip


def public_urls(client) -> list[str]:
    """Every public page, feed, client, file and API URL of the catalogue, signed links included."""
    signed = client.get("/models/index-tts/v10/model.pt")["Location"].split("://", 1)[-1].split("/", 1)[1]
    sha256 = hashlib.sha256(WEIGHTS["model.pt"] + b"v10").hexdigest()
    return [
        "/", "/models/index-tts/", "/models/index-tts/v10/", "/models/index-tts/latest/", "/models/index-tts/v11/",
        "/models/index-tts/v12/", "/models/nobody/", "/models/index-tts/v99/",
        "/models/index-tts/v10/model.pt", "/models/index-tts/latest/sub/config.yaml", "/models/index-tts/v12/model.pt",
        "/models/index-tts/releases.atom", "/feeds/releases.atom", "/models/nobody/releases.atom",
        "/models/index-tts/v13/", "/models/hidden-model/", "/models/index-tts/v13/model.pt",
        "/fetch-model.sh", "/fetch_model.py", "/healthz", "/metrics", f"/chunks/{sha256}", f"/{signed}",
        "/files/index-tts/v10/model.pt",
        "/api/v1/models", "/api/v1/models/index-tts", "/api/v1/models/index-tts/versions/v10",
        "/api/v1/models/index-tts/versions/latest", "/api/v1/models/index-tts/versions/v10/sha256sums",
        "/api/v1/models/nobody", "/api/openapi.json", "/api/docs",
    ]  # fmt: skip


@pytest.mark.parametrize("who", ["visitor", "staff"])  # staff see drafts: other querysets
@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_no_query_string_gets_a_server_error_from_any_public_url(request, catalogue, method, who):
    """On PostgreSQL, whose text cannot hold NUL (SQLite takes it, and would hide the 500s)."""
    assert connection.vendor == "postgresql", "run the suite with DATABASE_URL on PostgreSQL"
    client = request.getfixturevalue("client" if who == "visitor" else "admin_client")
    failures = []
    for url in public_urls(client):
        path, _, signed_query = url.partition("?")
        for query in FUZZED_QUERIES:
            raw = f"{signed_query}&{query}" if signed_query else query
            response = client.generic(method, path, QUERY_STRING=raw)
            if response.status_code >= 500:
                failures.append(f"{method} {path}?{raw[:80]} -> {response.status_code}")
    assert not failures, "\n".join(failures[:40])


def test_a_search_with_control_characters_finds_what_it_would_without_them(client, catalogue):
    """Dropped, not refused: 'index%00-tts' searches for 'index-tts', a NUL-only tag filters nothing."""
    assert b"index-tts" in client.get("/", QUERY_STRING="q=index%00-tts").content
    assert b"index-tts" in client.get("/", QUERY_STRING="q=%01INDEX%7f-TTS%00&sort=%00").content
    assert b"index-tts" in client.get("/", QUERY_STRING="tag=%00").content
    assert b"index-tts" not in client.get("/", QUERY_STRING="q=nothing%00like-it").content
