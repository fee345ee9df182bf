"""The index search's reading of a query: words across hyphens and case, matched by their stems."""

import pytest

from releases import search_terms, services
from releases.models import MLModel

pytestmark = pytest.mark.django_db


def test_words_split_on_hyphens_underscores_and_spaces_in_any_case():
    assert search_terms.words("Voice-Cloning  voice_cloning TTS") == ["voice", "cloning", "tts"]
    assert search_terms.stem("clone") == search_terms.stem("cloning") == "clon"
    assert search_terms.stem("tts") == "tts" and search_terms.stem("uses") == "use"


@pytest.fixture
def models(publish):
    publish("index-tts", "v1", {"model.pt": b"a"})
    publish("whisper-small", "v1", {"model.pt": b"b"})
    services.set_model_info("index-tts", tags=["voice-cloning", "tts"])
    services.set_model_info("whisper-small", description="Speech recognition for many languages.")
    publish("plain", "v1", {"model.pt": b"c"})
    services.set_model_info("plain", tags=["zebra", "quokka"])


@pytest.mark.parametrize(
    "query, found",
    [
        ("voice clone", ["index-tts"]),  # the tag voice-cloning
        ("Voice Cloning", ["index-tts"]),
        ("index tts", ["index-tts"]),  # the slug, across its hyphen
        ("speeches language", ["whisper-small"]),  # each word by its stem, in the description
        ("voice speech", []),  # every word must match
        ("zebra quokka", ["plain"]),  # each word by another tag of the same model
        ("---", ["index-tts", "plain", "whisper-small"]),  # no words: everything
    ],
)
def test_a_search_finds_models_by_every_word(models, query, found):
    result = search_terms.filter_models(MLModel.objects.order_by("slug"), query)
    assert list(result.values_list("slug", flat=True)) == found
