import hashlib

import factory
from django.utils import timezone

from releases.models import File, MLModel, Version, default_object_key

CONTENT = b"model weights\n"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class ModelFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = MLModel

    slug = factory.Sequence(lambda n: f"model-{n}")
    name = factory.LazyAttribute(lambda o: o.slug.replace("-", " ").title())
    summary = "A text-to-speech model."


class VersionFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Version

    model = factory.SubFactory(ModelFactory)
    version = factory.Sequence(lambda n: f"v{n + 1}")
    status = Version.Status.DRAFT
    notes = "Release notes."

    class Params:
        published = factory.Trait(status=Version.Status.PUBLISHED, published_at=factory.LazyFunction(timezone.now))


class FileFactory(factory.django.DjangoModelFactory):
    """A file row; its object is not in storage (use services to upload real bytes)."""

    class Meta:
        model = File

    version = factory.SubFactory(VersionFactory)
    path = factory.Sequence(lambda n: f"file-{n}.bin")
    key = factory.LazyAttribute(lambda o: default_object_key(o.version.model.slug, o.version.version, o.path))
    size = len(CONTENT)
    sha256 = hashlib.sha256(CONTENT).hexdigest()
