"""release_status: the admin's status changes from the command line, recorded in the outbox."""

import pytest
from django.core.management import CommandError, call_command

from releases.models import OutboxEntry, Version

pytestmark = pytest.mark.django_db


def status(*args) -> str:
    from io import StringIO

    out = StringIO()
    call_command("release_status", *args, stdout=out)
    return out.getvalue().strip()


def purge_keys() -> set[str]:
    return set(OutboxEntry.objects.filter(kind="purge").values_list("key", flat=True))


def test_the_whole_life_of_a_version(publish, settings):
    publish("index-tts", "v1", {"model.pt": b"w"}, draft=True)
    OutboxEntry.objects.all().delete()
    assert status("index-tts", "v1", "publish") == "index-tts v1 is published."
    assert "model-index-tts" in purge_keys()
    OutboxEntry.objects.all().delete()
    assert status("index-tts", "V1", "yank", "--reason", "corrupt vocoder") == "index-tts v1 is yanked."
    assert Version.objects.get().yanked_reason == "corrupt vocoder" and "version-index-tts-v1" in purge_keys()
    assert status("index-tts", "v1", "unyank") == "index-tts v1 is published."
    assert status("index-tts", "v1", "withdraw") == "index-tts v1 is withdrawn."


@pytest.mark.parametrize(
    "start, args, message",
    [
        ("draft", ["unyank"], "index-tts v1 is draft, not yanked."),
        ("draft", ["yank", "--reason", "x"], "index-tts v1 is draft and cannot become yanked."),
        ("published", ["yank"], "Yanking needs a reason"),
        ("withdrawn", ["publish"], "index-tts v1 is withdrawn and cannot become published."),
    ],
)
def test_refused_changes_say_why_and_change_nothing(publish, start, args, message):
    version = publish("index-tts", "v1", {"model.pt": b"w"}, draft=True)
    if start != "draft":
        status("index-tts", "v1", "publish")
    if start == "withdrawn":
        status("index-tts", "v1", "withdraw")
    before = Version.objects.get(pk=version.pk).status
    with pytest.raises(CommandError, match=message):
        status("index-tts", "v1", *args)
    assert Version.objects.get(pk=version.pk).status == before


@pytest.mark.django_db(transaction=True)
def test_a_refusal_exits_1_with_one_line_on_stderr(manage, publish):
    publish("index-tts", "v1", {"model.pt": b"w"})
    result = manage("release_status", "index-tts", "v1", "unyank")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == ["CommandError: index-tts v1 is published, not yanked."]
    unknown = manage("release_status", "index-tts", "v9", "withdraw")
    assert unknown.returncode == 1 and unknown.stderr.strip() == "CommandError: index-tts has no version v9."
