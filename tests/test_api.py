"""The JSON API: contract fields, expiry bounds, errors as JSON, sha256sums, OpenAPI."""

import hashlib
import time
from datetime import UTC, datetime

import pytest
from openapi_spec_validator import validate

from .data import WEIGHTS

pytestmark = pytest.mark.django_db


def test_version_object_has_the_contract_fields(client, catalogue, settings):
    before = time.time()
    response = client.get("/api/v1/models/index-tts/versions/latest")
    assert response.status_code == 200 and response["X-Artifact-Version"] == "v10"
    body = response.json()
    assert set(body) == {"model", "version", "status", "prerelease", "published_at", "notes", "yanked_reason", "files",
                         "total_size", "changes", "downloads", "report_url"}  # fmt: skip
    assert (body["model"], body["version"], body["status"], body["prerelease"]) == (
        "index-tts",
        "v10",
        "published",
        False,
    )
    assert body["published_at"].endswith("Z")
    assert [f["path"] for f in body["files"]] == ["model.pt", "sub/config.yaml"]
    ttl = settings.SIGNED_URL_TTL
    for file in body["files"]:
        assert set(file) == {"path", "size", "sha256", "url", "expires_at", "stable_url", "chunks_url"}
        assert file["chunks_url"] is None  # files under 1 MiB get no chunk manifest (tests/test_chunking.py)
        content = WEIGHTS[file["path"]] + b"v10"
        assert (file["size"], file["sha256"]) == (len(content), hashlib.sha256(content).hexdigest())
        assert file["stable_url"] == f"http://testserver/models/index-tts/v10/{file['path']}"
        assert file["url"].startswith("http://testserver/files/index-tts/v10/")
        expires = datetime.strptime(file["expires_at"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()
        assert before + ttl <= expires + 1 and expires <= time.time() + 2 * ttl
        downloaded = client.get(file["url"])
        assert hashlib.sha256(b"".join(downloaded.streaming_content)).hexdigest() == file["sha256"]


def test_model_and_model_list(client, catalogue):
    models = client.get("/api/v1/models").json()["models"]
    assert [m["model"] for m in models] == ["index-tts"]
    assert models[0]["latest"] == "v10" and models[0]["url"] == "http://testserver/api/v1/models/index-tts"
    model = client.get("/api/v1/models/index-tts").json()
    assert model["latest"] == "v10"
    assert [v["version"] for v in model["versions"]] == ["v23", "v12", "v11", "v10", "v9"]
    yanked = next(v for v in model["versions"] if v["version"] == "v11")
    assert (yanked["status"], yanked["yanked_reason"]) == ("yanked", "Corrupt vocoder; use v10.")
    assert yanked["url"] == "http://testserver/api/v1/models/index-tts/versions/v11"


@pytest.mark.parametrize(
    "url, status",
    [
        ("/api/v1/models/nope", 404),
        ("/api/v1/models/hidden-model", 404),
        ("/api/v1/models/index-tts/versions/v13", 404),
        ("/api/v1/models/index-tts/versions/v99", 404),
        ("/api/v1/models/index-tts/versions/v12", 410),
        ("/api/v1/models/index-tts/versions/v12/sha256sums", 410),
        ("/api/v1/models/hidden-model/versions/latest", 404),
        ("/api/v2/models", 404),
        ("/api/v1/models/index-tts/versions", 404),
        ("/api/v1/models/%00/versions/%ff%fe", 404),
        ("/api/v1/models/" + "x" * 5000, 404),
        ("/api/v1/models/index-tts/versions/v9/sha256sums/extra", 404),
    ],
)
def test_api_errors_are_json(client, catalogue, url, status):
    response = client.get(url)
    assert response.status_code == status
    assert response["Content-Type"].startswith("application/json")
    assert set(response.json()) == {"detail"} and response.json()["detail"]


def test_withdrawn_detail_names_the_version(client, catalogue):
    assert client.get("/api/v1/models/index-tts/versions/v12").json() == {
        "detail": "index-tts v12 was withdrawn; choose another version."
    }


def test_wrong_methods_and_odd_queries_get_json_not_html(client, catalogue):
    for response in (
        client.post("/api/v1/models"),
        client.delete("/api/v1/models/index-tts"),
        client.put("/api/v1/models/index-tts/versions/v9"),
    ):
        assert response.status_code == 405 and response.json() == {"detail": "Method not allowed."}
    response = client.get("/api/v1/models/index-tts/versions/v9", {"format": "xml", "x": "\x00"})
    assert response.status_code == 200


def test_staff_see_drafts_in_the_api(admin_client, catalogue):
    assert admin_client.get("/api/v1/models/index-tts/versions/v13").json()["status"] == "draft"
    assert "hidden-model" in [m["model"] for m in admin_client.get("/api/v1/models").json()["models"]]


def test_sha256sums_pass_sha256sum_check(client, catalogue, tmp_path):
    import subprocess

    response = client.get("/api/v1/models/index-tts/versions/latest/sha256sums")
    assert response["Content-Type"] == "text/plain; charset=utf-8" and response["X-Artifact-Version"] == "v10"
    (tmp_path / "check" / "sub").mkdir(parents=True)
    (tmp_path / "check" / "SHA256SUMS").write_bytes(response.content)
    for path in ("model.pt", "sub/config.yaml"):
        link = client.get(f"/models/index-tts/v10/{path}")["Location"]
        (tmp_path / "check" / path).write_bytes(b"".join(client.get(link).streaming_content))
    result = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=tmp_path / "check", capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines() == ["model.pt: OK", "sub/config.yaml: OK"]


def test_openapi_document_is_valid_and_describes_the_contract(client):
    document = client.get("/api/openapi.json").json()
    validate(document)
    paths = document["paths"]
    assert set(paths) >= {
        "/api/v1/models",
        "/api/v1/models/{model}",
        "/api/v1/models/{model}/versions/{version}",
        "/api/v1/models/{model}/versions/{version}/sha256sums",
    }
    version = document["components"]["schemas"]["VersionOut"]["properties"]
    assert set(version) == {
        "model",
        "version",
        "status",
        "prerelease",
        "published_at",
        "notes",
        "yanked_reason",
        "files",
        "total_size",
        "changes",
        "downloads",
        "report_url",
    }
    file = document["components"]["schemas"]["FileOut"]
    assert set(file["properties"]) == {"path", "size", "sha256", "url", "expires_at", "stable_url", "chunks_url"}
    assert set(file["required"]) == set(file["properties"])  # chunks_url is always there, null without a manifest
    assert {"type": "null"} in file["properties"]["chunks_url"]["anyOf"]
    changes = document["components"]["schemas"]["ChangesOut"]
    assert set(changes["properties"]) == {"previous", "added", "removed", "changed"}
    assert client.get("/api/docs").status_code == 200


@pytest.mark.parametrize(
    "version, status",
    [("v9", 200), ("v11", 200), ("v99", 404), ("v12", 410)],
    ids=["published", "yanked", "missing", "withdrawn"],
)
@pytest.mark.parametrize("tail", ["", "/sha256sums"], ids=["json", "sha256sums"])
def test_the_headers_clients_read_are_in_the_openapi_document(client, catalogue, version, status, tail):
    """The clients read the version, its status and where to report from these headers, errors included."""
    document = client.get("/api/openapi.json").json()
    operation = document["paths"]["/api/v1/models/{model}/versions/{version}" + tail]["get"]
    documented = set(operation["responses"][str(status)].get("headers", {}))
    response = client.get(f"/api/v1/models/index-tts/versions/{version}{tail}")
    sent = {name for name in response.headers if name.startswith("X-Artifact-") or name == "X-Report-URL"}
    assert response.status_code == status and sent  # each of these answers carries at least one
    assert sent <= documented, f"sent but not documented: {sent - documented}"


def test_api_responses_are_cacheable_and_conditional(client, catalogue):
    response = client.get("/api/v1/models/index-tts/versions/v9")
    assert response["xkey"] == "model-index-tts version-index-tts-v9" and "s-maxage" in response["Cache-Control"]
    assert client.get("/api/v1/models/index-tts/versions/v9", HTTP_IF_NONE_MATCH=response["ETag"]).status_code == 304


def test_every_openapi_field_is_described_with_a_real_example_and_status_is_an_enum(client):
    schemas = client.get("/api/openapi.json").json()["components"]["schemas"]
    for name, schema in schemas.items():
        for field, spec in schema.get("properties", {}).items():
            assert spec.get("description"), f"{name}.{field} has no description"
            assert spec.get("examples") != ["string"], f"{name}.{field}"
    statuses = {"draft", "published", "yanked", "withdrawn"}
    assert set(schemas["VersionOut"]["properties"]["status"]["enum"]) == statuses
    assert set(schemas["VersionSummary"]["properties"]["status"]["enum"]) == statuses
    assert schemas["FileOut"]["properties"]["sha256"]["examples"][0] != "string"


def test_the_api_docs_page_links_home(client):
    page = client.get("/api/docs").content.decode()
    assert '<a href="/">' in page and "Model Releases" in page
