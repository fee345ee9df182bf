import pytest
from django.contrib.auth.models import AnonymousUser
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction

from releases.models import (
    File,
    ImmutableError,
    MLModel,
    Version,
    natural_sort_key,
    validate_model_slug,
    validate_object_key,
    validate_relative_path,
    validate_version_string,
)

from .factories import FileFactory, ModelFactory, VersionFactory

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("value", ["v23", "2.0.1", "1.0rc1", "V1_final", "0", "a" * 64, "1.2+cu121", "2024-01-01"])
def test_valid_version_strings(value):
    validate_version_string(value)


@pytest.mark.parametrize(
    "value", ["", "latest", "LATEST", "-v1", ".1", "_x", "v 1", "v/1", "v1?", "a" * 65, "ünï", "v1\n"]
)
def test_invalid_version_strings_are_refused_with_a_message(value):
    with pytest.raises(ValidationError) as error:
        validate_version_string(value)
    assert repr(value) in error.value.messages[0]


@pytest.mark.parametrize("value", ["index-tts", "m", "gpt2", "a-b-c"])
def test_valid_model_slugs(value):
    validate_model_slug(value)


@pytest.mark.parametrize("value", ["Index-TTS", "under_score", "-lead", "trail-", "dou--ble", "sp ace", "", "ü"])
def test_invalid_model_slugs(value):
    with pytest.raises(ValidationError):
        validate_model_slug(value)


@pytest.mark.parametrize("value", ["model.pt", "sub/config.yaml", "a/b/c.bin", ".hidden", "with space.bin"])
def test_valid_paths(value):
    validate_relative_path(value)


@pytest.mark.parametrize(
    "value, problem",
    [
        ("", "empty"),
        ("/etc/passwd", "relative"),
        ("../x", "'..'"),
        ("a/../../b", "'..'"),
        ("a/./b", "'.'"),
        ("a\\b", "backslash"),
        ("a//b", "empty segment"),
        ("dir/", "empty segment"),
        ("a\x00b", "control"),
        ("x" * 1025, "longer"),
    ],
)
def test_invalid_paths_name_the_problem(value, problem):
    with pytest.raises(ValidationError) as error:
        validate_relative_path(value)
    assert problem in error.value.messages[0]


def test_object_keys_stay_inside_the_model_prefix():
    validate_object_key("index-tts/v1/model.pt", "index-tts")
    for key in ["other/v1/model.pt", "index-tts-2/v1/x", "index-tts/../other/x", "/index-tts/x", "index-tts"]:
        with pytest.raises(ValidationError):
            validate_object_key(key, "index-tts")


def test_natural_order_of_versions():
    shuffled = ["v10", "v9", "v23", "1.10", "1.2", "1.9", "v2", "V3", "v1"]
    assert sorted(shuffled, key=natural_sort_key) == ["1.2", "1.9", "1.10", "v1", "v2", "V3", "v9", "v10", "v23"]
    assert natural_sort_key("v007") == natural_sort_key("v7")
    assert bytes.fromhex(natural_sort_key("v10")) == b"v0210"


def test_latest_is_the_highest_published_non_prerelease_version():
    model = ModelFactory()
    for name in ["v9", "v10", "v2"]:
        VersionFactory(model=model, version=name, published=True)
    VersionFactory(model=model, version="v23", published=True, prerelease=True)
    VersionFactory(model=model, version="v11", status=Version.Status.YANKED)
    VersionFactory(model=model, version="v12", status=Version.Status.WITHDRAWN)
    VersionFactory(model=model, version="v13")  # draft
    assert Version.objects.latest_for(model).version == "v10"


def test_latest_uses_numeric_order_of_dotted_versions():
    model = ModelFactory()
    VersionFactory(model=model, version="1.2", published=True)
    VersionFactory(model=model, version="1.10", published=True)
    assert Version.objects.latest_for(model).version == "1.10"


def test_no_latest_without_a_published_version():
    model = ModelFactory()
    VersionFactory(model=model, version="v1", prerelease=True, published=True)
    assert Version.objects.latest_for(model) is None


def test_public_models_and_versions_hide_drafts(django_user_model):
    only_drafts = VersionFactory().model
    released = VersionFactory(published=True).model
    VersionFactory(model=released)  # a draft beside it
    withdrawn = VersionFactory(status=Version.Status.WITHDRAWN).model
    assert set(MLModel.objects.public()) == {released, withdrawn}
    assert set(MLModel.objects.visible_to(AnonymousUser())) == {released, withdrawn}
    from django.contrib.auth.models import Permission

    maintainer = django_user_model.objects.create_user("maintainer", is_staff=True)
    maintainer.user_permissions.add(Permission.objects.get(codename="view_version"))
    staff_without_permissions = django_user_model.objects.create_user("staff", is_staff=True)
    assert only_drafts in MLModel.objects.visible_to(maintainer)
    assert only_drafts not in MLModel.objects.visible_to(staff_without_permissions)
    assert Version.objects.visible_to(AnonymousUser()).filter(status="draft").count() == 0
    assert Version.objects.visible_to(staff_without_permissions).filter(status="draft").count() == 0
    assert Version.objects.visible_to(maintainer).filter(status="draft").count() == 2
    assert set(Version.objects.downloadable().values_list("status", flat=True)) == {"published"}


def test_versions_are_unique_per_model_ignoring_case():
    version = VersionFactory(version="v1")
    VersionFactory(version="v1")  # another model may use it
    with pytest.raises(IntegrityError), transaction.atomic():
        VersionFactory(model=version.model, version="V1")


def test_published_file_is_immutable():
    file = FileFactory(version=VersionFactory(published=True))
    file = File.objects.get(pk=file.pk)
    file.sha256 = "0" * 64
    with pytest.raises(ImmutableError, match="cannot change"):
        file.save()
    with pytest.raises(ValidationError, match="its sha256 cannot change"):
        file.full_clean()
    file = File.objects.get(pk=file.pk)
    file.size = 1
    file.key = file.key + "x"
    with pytest.raises(ImmutableError, match="key, size"):
        file.save()
    with pytest.raises(ImmutableError, match="withdraw the version"):
        File.objects.get(pk=file.pk).delete()
    assert File.objects.get(pk=file.pk).size == FileFactory._meta.declarations["size"]


def test_draft_file_may_change_and_go():
    file = File.objects.get(pk=FileFactory().pk)
    file.size = 99
    file.save()
    assert File.objects.get(pk=file.pk).size == 99
    file.delete()
    assert not File.objects.filter(pk=file.pk).exists()


def test_database_refuses_a_checksum_that_is_not_hex():
    with pytest.raises(IntegrityError), transaction.atomic():
        FileFactory(sha256="not-a-checksum")


def test_sort_key_orders_the_same_under_any_collation():
    # Hex digits and lower-case letters sort alike everywhere, so '.', '-', '+' cannot be skipped.
    keys = [natural_sort_key(v) for v in ["1.0-1", "1.0+1", "1.0_1", "1.0.1"]]
    assert all(set(key) <= set("0123456789abcdef") for key in keys)
    assert sorted(keys) == sorted(keys, key=lambda k: bytes.fromhex(k))


def test_a_published_version_keeps_its_model_and_version_string():
    version = Version.objects.get(pk=VersionFactory(published=True, version="v1").pk)
    version.version = "v2"
    with pytest.raises(ImmutableError, match="cannot change"):
        version.save()
    draft = Version.objects.get(pk=VersionFactory(version="v3").pk)
    draft.version = "v4"
    draft.save()
    assert Version.objects.filter(version="v4").exists()


def test_a_draft_file_cannot_be_moved_into_a_published_version():
    published = VersionFactory(published=True)
    file = File.objects.get(pk=FileFactory().pk)
    file.version = published
    with pytest.raises(ImmutableError):
        file.save()
