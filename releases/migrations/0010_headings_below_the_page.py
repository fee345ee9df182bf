"""Rendered cards and notes written before headings were demoted: their `<h1>` becomes `<h3>` (and so
on, as releases.rendering now writes them), and cmark's `<pre lang="...">` loses its invalid `lang`.
Done on the stored HTML (already sanitised), so nothing is rendered again."""

import re

from django.db import migrations

HEADING = re.compile(r"<(/?)h([1-6])\b", re.IGNORECASE)
PRE_LANG = re.compile(r'<pre lang="[^"]*">')
ALREADY = re.compile(r"<h[12]\b", re.IGNORECASE)  # demoted HTML has no h1 or h2 left


def demote(html: str) -> str:
    if not ALREADY.search(html) and "<pre lang=" not in html:
        return html
    html = HEADING.sub(lambda m: f"<{m.group(1)}h{min(6, int(m.group(2)) + 2)}", html) if ALREADY.search(html) else html
    return PRE_LANG.sub("<pre>", html)


def forwards(apps, schema_editor):
    for model_name, field in (("MLModel", "description_html"), ("Version", "notes_html")):
        model = apps.get_model("releases", model_name)
        for pk, html in model.objects.exclude(**{field: ""}).values_list("pk", field).iterator():
            changed = demote(html)
            if changed != html:
                model.objects.filter(pk=pk).update(**{field: changed})


class Migration(migrations.Migration):
    dependencies = [("releases", "0009_run_reports")]
    operations = [migrations.RunPython(forwards, migrations.RunPython.noop)]
