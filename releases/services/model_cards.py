"""A model's card: name, summary, description (Markdown, rendered when written), license, tags and
links, edited in the admin or with set_model_info."""

from __future__ import annotations

from django.db import transaction

from ..licenses import canonical
from ..models import File, MLModel, Tag, validate_tag
from ..rendering import normalise_newlines, render_markdown
from .common import ReleaseError, as_release_error, record_change

UNCHANGED = object()


def save_model_details(model: MLModel, *, tags: list[str] | None = None) -> MLModel:
    """Create or update a model's card; `tags`, when given, replaces its tags."""
    names = clean_tags(tags) if tags is not None else None
    model.description = normalise_newlines(model.description)  # a textarea sends \r\n
    with as_release_error():
        model.full_clean(exclude=["description"])  # the description is checked once, by rendering it
        model.description_html = render_markdown(model.description)
    if model.pk and MLModel.objects.filter(pk=model.pk).exclude(slug=model.slug).exists():
        if File.objects.filter(version__model=model).exists():
            raise ReleaseError(
                f"{model.slug}: the slug is part of its files' object keys and URLs, so it cannot change once "
                "files were added."
            )
    with transaction.atomic():
        model.save()
        if names is not None:
            model.tags.set([Tag.objects.get_or_create(name=name)[0] for name in names])
        if model.versions.listed().exists():
            record_change(model.slug)
    return model


def set_model_info(slug: str, *, description=UNCHANGED, license=UNCHANGED, tags=UNCHANGED, homepage=UNCHANGED,
                   source=UNCHANGED, paper=UNCHANGED) -> MLModel:  # fmt: skip
    """Change the named parts of a model's card and keep the rest (the set_model_info command)."""
    model = MLModel.objects.filter(slug=slug).first()
    if model is None:
        raise ReleaseError(f"There is no model {slug!r}; publish a version of it first.")
    if license is not UNCHANGED:
        model.license = canonical(license) or license  # "apache-2.0" is Apache-2.0; unknown ones are refused
    for field, value in (("description", description), ("homepage_url", homepage), ("source_url", source),
                         ("paper_url", paper)):  # fmt: skip
        if value is not UNCHANGED:
            setattr(model, field, value)
    return save_model_details(model, tags=None if tags is UNCHANGED else list(tags))


def clean_tags(names: list[str]) -> list[str]:
    """Lower-case, without duplicates, each a valid tag."""
    cleaned = list(dict.fromkeys(name.strip().lower() for name in names if name.strip()))
    with as_release_error():
        for name in cleaned:
            validate_tag(name)
    return cleaned
