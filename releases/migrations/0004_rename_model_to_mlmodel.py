"""The domain's model class is MLModel, so that no class shadows django.db.models.Model."""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("releases", "0003_notes_rendered_when_written")]

    operations = [
        migrations.RenameModel("Model", "MLModel"),
        migrations.AlterModelOptions(name="mlmodel", options={"ordering": ["slug"], "verbose_name": "model"}),
    ]
