"""The one rule for file names (releases/names.py): what it refuses and why, that the served Python
client refuses exactly the same names, that every way in (publish_release, the admin's form,
publishing a draft) applies it, and that files published before it stay downloadable and listed."""

import importlib.util
import io

import pytest
from django.core.management import call_command

from releases import services
from releases.admin_files import FileForm
from releases.models import File, Version
from releases.names import path_problem, structure_problem

from .factories import FileFactory, VersionFactory
from .servers import REPO_ROOT

pytestmark = pytest.mark.django_db

REFUSED = {
    "": "is empty",
    "x" * 1025: "longer than 1024",
    "/etc/passwd": "relative",
    "C:/Windows/x": "must not contain :",
    "c:evil": "must not contain :",
    "\\\\server\\share": "backslash",
    "a\\b": "backslash",
    "a//b": "empty segment",
    "dir/": "empty segment",
    "./x": "'.' or '..'",
    "a/./b": "'.' or '..'",
    "../x": "'.' or '..'",
    "a/../../b": "'.' or '..'",
    "a\x00b": "control",
    "tab\there": "control",
    "bell\x07.bin": "control",
    "del\x7f.bin": "control",
    "line\nbreak": "control",
    "ckpt:2024-01-01.yaml": "must not contain :",
    'a*b?<>|".bin': 'must not contain " * < > ? |',
    "a<b": "<",
    "a>b": ">",
    'a"b': '"',
    "a|b": "|",
    "what?.bin": "?",
    "star*.bin": "*",
    "CON": "reserves",
    "con": "reserves",
    "Con.yaml": "reserves",
    "nul.txt": "reserves",
    "NUL.tar.gz": "reserves",
    "PRN": "reserves",
    "aux/x": "reserves",
    "sub/AUX.json": "reserves",
    "CONIN$": "reserves",
    "conout$.txt": "reserves",
    "COM0": "reserves",
    "COM1.bin": "reserves",
    "sub/COM1.bin": "reserves",
    "com9": "reserves",
    "LPT0.log": "reserves",
    "lpt9": "reserves",
    "COM\u00b9": "reserves",
    "com\u00b2.bin": "reserves",
    "LPT\u00b3": "reserves",
    "lpt\u00b9.txt": "reserves",
    "CON .txt": "reserves",
    "nul  .bin": "reserves",
    "name.": "ending in a dot or a space",
    "trailing ": "ending in a dot or a space",
    "dir./x": "ending in a dot or a space",
    "sub /x": "ending in a dot or a space",
    "AUX ": "ending in a dot or a space",
    "weights..": "ending in a dot or a space",
}
ACCEPTED = [
    "model.pt",
    "sub/dir/weights.bin",
    "checkpoints/config.yaml",
    "CONFIG.yaml",
    "console.log",
    "com10.txt",
    "lpt10",
    "COM",
    "LPT.txt",
    "nul_model.bin",
    "auxiliary/x",
    "CONIN.txt",
    "COM1x.bin",
    "模型.bin",
    "café.bin",
    "a b/c",
    ".hidden",
    "with space.bin",
    "a.b.c",
    "x" * 1024,
    "a'b;c&d#e%20f.bin",
    "~tilde/-dash/_under",
    "emoji-\U0001f642.bin",
]


def load_client():
    """The served Python client as a module (it is one file that users save beside their app)."""
    spec = importlib.util.spec_from_file_location("fetch_model", REPO_ROOT / "releases" / "client" / "fetch_model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("path, reason", REFUSED.items(), ids=[repr(path)[:40] for path in REFUSED])
def test_the_rule_refuses_what_some_platform_or_client_cannot_hold_and_says_why(path, reason):
    problem = path_problem(path)
    assert problem is not None and reason in problem


@pytest.mark.parametrize("path", ACCEPTED, ids=[path[:40] for path in ACCEPTED])
def test_the_rule_accepts_ordinary_names(path):
    assert path_problem(path) is None


@pytest.mark.parametrize("path", [*REFUSED, *ACCEPTED], ids=[repr(p)[:40] for p in [*REFUSED, *ACCEPTED]])
def test_the_served_python_client_and_the_site_agree_on_every_name(path):
    client = load_client()
    try:
        client_accepts = client.safe_relative_path(path) == path
    except client.WrongContent:
        client_accepts = False
    site_accepts = path_problem(path) is None
    assert client_accepts == site_accepts, f"site {'accepts' if site_accepts else 'refuses'} {path!r}, client not"


def test_text_that_cannot_be_stored_is_refused_by_both_checks():
    for check in (path_problem, structure_problem):
        assert "lone surrogate" in check("weights-\ud800.bin")


def test_published_names_keep_the_structure_rule_only():
    """What stable URLs and object keys are held to: every file published before the portable rule."""
    for path in ["nul.txt", "ckpt:1.yaml", "name.", "COM\u00b9"]:
        assert structure_problem(path) is None


@pytest.mark.parametrize("path", ["ckpt:2024-01-01.yaml", "CON", "sub/nul.txt", "COM\u00b9.bin", "name."])
def test_publish_release_refuses_the_name_and_leaves_nothing(publish, tmp_path, path):
    with pytest.raises(services.ReleaseError) as refused:
        publish("tts", "v1", {"model.pt": b"weights", path: b"x"})
    assert repr(path) in str(refused.value)
    assert not Version.objects.exists() and not File.objects.exists()
    assert not any(p.is_file() for p in (tmp_path / "objects").rglob("*"))


def test_the_admin_s_file_form_refuses_the_name_with_the_reason():
    version = VersionFactory()
    form = FileForm(data={"path": "weights/aux.bin", "existing_key": f"{version.model.slug}/x"})
    form.instance.version = version
    assert not form.is_valid()
    assert "which Windows reserves for a device" in str(form.errors)


def test_a_draft_holding_a_name_recorded_before_the_rule_cannot_be_published(local_store):
    draft = VersionFactory()
    FileFactory(version=draft, path="checkpoints/LPT1.bin")
    with pytest.raises(services.ReleaseError, match="LPT1.bin.*reserves"):
        services.publish_version(draft)
    assert Version.objects.get(pk=draft.pk).is_draft


def run_listing() -> tuple[int, str]:
    out = io.StringIO()
    try:
        call_command("list_unsafe_paths", stdout=out, stderr=io.StringIO())
    except SystemExit as exit_:
        return exit_.code, out.getvalue()
    return 0, out.getvalue()


def test_files_published_before_the_rule_stay_downloadable_and_are_listed(client, publish):
    publish("tts", "v1", {"model.pt": b"weights"})
    assert run_listing() == (0, "")
    legacy = VersionFactory(model__slug="old", version="v3", published=True)
    FileFactory(version=legacy, path="ckpt:2024.yaml")
    FileFactory(version=legacy, path="sub/nul.txt")
    FileFactory(version=VersionFactory(model=legacy.model, version="v4"), path="CON")  # a draft: not published
    yanked = services.yank_version(VersionFactory(model=legacy.model, version="v2", published=True), "old")
    FileFactory(version=yanked, path="trailing.")

    code, listing = run_listing()
    assert code == 1
    assert listing.splitlines() == [
        "old v2 trailing.: has a name ending in a dot or a space ('trailing.'), which Windows drops",
        'old v3 ckpt:2024.yaml: must not contain : (no name on Windows may hold any of < > : " | ? *)',
        "old v3 sub/nul.txt: uses the name 'nul.txt', which Windows reserves for a device",
    ]
    for url in ["/models/old/v3/ckpt:2024.yaml", "/models/old/v3/sub/nul.txt", "/models/old/v2/trailing."]:
        response = client.get(url)
        assert response.status_code == 302, url
        assert response["X-Artifact-Size"] == str(File.objects.get(path=url.split("/", 4)[4]).size)
