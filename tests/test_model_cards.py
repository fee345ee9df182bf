"""A model's card: description, license, tags and links, from the command line and the admin."""

import pytest
from django.core.management import CommandError, call_command

from releases import services
from releases.models import MLModel

pytestmark = pytest.mark.django_db


@pytest.fixture
def tts(publish):
    publish("index-tts", "v1", {"model.pt": b"x"})
    return MLModel.objects.get(slug="index-tts")


def test_set_model_info_sets_every_part_and_renders_the_description(tts, tmp_path, capsys):
    card = tmp_path / "card.md"
    card.write_text("# IndexTTS\n\nZero-shot **TTS**.\n<script>alert(1)</script>\n")
    call_command("set_model_info", "index-tts", "--description-file", str(card), "--license", "apache-2.0",
                 "--tag", "TTS", "--tag", "chinese", "--tag", "tts", "--homepage", "https://example.org",
                 "--source", "https://git.example.org/tts", "--paper", "https://arxiv.org/abs/2506.21619")  # fmt: skip
    tts.refresh_from_db()
    assert tts.license == "Apache-2.0"  # the SPDX spelling
    assert sorted(tts.tags.values_list("name", flat=True)) == ["chinese", "tts"]
    assert "<strong>TTS</strong>" in tts.description_html and "<script" not in tts.description_html
    assert (tts.homepage_url, tts.source_url, tts.paper_url) == (
        "https://example.org", "https://git.example.org/tts", "https://arxiv.org/abs/2506.21619",
    )  # fmt: skip
    assert "license Apache-2.0 (Apache License 2.0); tags chinese, tts." in capsys.readouterr().out


def test_what_is_not_named_stays(tts):
    services.set_model_info("index-tts", license="MIT", tags=["a"], homepage="https://a.example")
    services.set_model_info("index-tts", tags=["b"])
    tts.refresh_from_db()
    assert tts.license == "MIT" and tts.homepage_url == "https://a.example"
    assert list(tts.tags.values_list("name", flat=True)) == ["b"]
    services.set_model_info("index-tts", tags=[""])  # --tag '' clears them
    assert not tts.tags.exists()


@pytest.mark.parametrize(
    "option, message",
    [
        (["--license", "Apache 2"], "'Apache 2' is not an SPDX license identifier"),
        (["--tag", "has space"], "'has space' is not a valid tag"),
        (["--homepage", "not a url"], "Enter a valid URL"),
        ([], "Name at least one part to change"),
    ],
)
def test_bad_input_is_refused_with_one_clear_line_and_changes_nothing(tts, option, message):
    services.set_model_info("index-tts", license="MIT", tags=["kept"])
    with pytest.raises(CommandError, match=message):
        call_command("set_model_info", "index-tts", *option)
    tts.refresh_from_db()
    assert tts.license == "MIT" and list(tts.tags.values_list("name", flat=True)) == ["kept"]


def test_a_description_over_the_size_limit_is_refused(tts, tmp_path, settings):
    settings.RELEASE_NOTES_MAX_BYTES = 100
    card = tmp_path / "card.md"
    card.write_text("x" * 101)
    with pytest.raises(CommandError, match="100"):
        call_command("set_model_info", "index-tts", "--description-file", str(card))
    tts.refresh_from_db()
    assert tts.description == "" and tts.description_html == ""


def test_an_unknown_model_or_an_unreadable_file_is_refused(tts, tmp_path):
    with pytest.raises(CommandError, match="There is no model 'nope'"):
        call_command("set_model_info", "nope", "--license", "MIT")
    with pytest.raises(CommandError, match="Cannot read"):
        call_command("set_model_info", "index-tts", "--description-file", str(tmp_path / "missing.md"))


def test_a_listed_models_card_change_purges_its_pages(tts):
    from releases.models import OutboxEntry

    OutboxEntry.objects.all().delete()
    services.set_model_info("index-tts", license="MIT")
    assert set(OutboxEntry.objects.values_list("key", flat=True)) == {"models", "model-index-tts"}
