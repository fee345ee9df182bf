"""How the index's search reads what a visitor typed: words, whatever the case and whatever joins them
(`voice clone`, `Voice-Cloning` and `voice_cloning` are the same two words), each matched by its stem
(`clone` finds `cloning`), every word somewhere in the model's slug, name, summary, description or tags.

`filter_models` is what the index's selector applies for a search; `words` is the reading alone."""

from __future__ import annotations

import re
from functools import reduce
from operator import or_

from django.db.models import Q, QuerySet

MAX_WORDS = 8  # a longer query is a sentence; its first words decide
SEPARATORS = re.compile(r"[\s\-_./,;:]+")
SUFFIXES = ("ing", "ers", "ed", "es", "er", "s", "e")  # the endings English inflection adds, longest first
FIELDS = ("slug", "name", "summary", "description", "tags__name")


def words(query: str) -> list[str]:
    """Lower-case words of the query, in order, without repeats."""
    parts = [part for part in SEPARATORS.split(query.lower()) if part]
    return list(dict.fromkeys(parts))[:MAX_WORDS]


def stem(word: str) -> str:
    """The word without one inflection ending, never shorter than 3 letters: `clone`, `cloning` -> `clon`."""
    for suffix in SUFFIXES:
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[: -len(suffix)]
    return word


def word_matches(word: str) -> Q:
    """A model that has the word's stem in any searched field; text joined by hyphens counts, since
    `voice-cloning` contains `clon`."""
    return reduce(or_, (Q(**{f"{field}__icontains": stem(word)}) for field in FIELDS))


def filter_models(models: QuerySet, query: str) -> QuerySet:
    """Models matching every word of `query` (distinct: a tag join may repeat a row); all of them for
    a query without words."""
    found = words(query)
    if not found:
        return models
    for word in found:  # a filter per word: each may match a different tag of the same model
        models = models.filter(word_matches(word))
    return models.distinct()
