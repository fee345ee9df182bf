"""The admin's file rows of a version: add files to a draft (upload, or an object already in
storage), each shown with its size, a shortened SHA-256 and object key (full values on demand, so the
table fits the screen) and its latest verification. Two rows for one path are one clear error, and
nothing of the form is saved."""

from django import forms
from django.contrib import admin
from django.core.exceptions import ValidationError
from django.forms.models import BaseInlineFormSet
from django.utils.html import format_html

from .models import File, default_object_key, validate_relative_path
from .sizes import binary_size

INLINE_UPLOAD_LIMIT = 100 * 1024 * 1024  # one request, no progress: above this, the parts page is kinder


class FileForm(forms.ModelForm):
    """A new file for a draft: upload it, or register an object already in storage."""

    # A tabular row's inputs have only the column heading above them: each names itself for a screen reader.
    upload = forms.FileField(
        required=False,
        allow_empty_file=True,  # a folder's `.gitkeep` or an empty `__init__.py` is a file of the version too
        widget=forms.ClearableFileInput(attrs={"aria-label": "File to upload"}),
        help_text="Small files only; for large files or a whole folder use “Upload large files” above.",
    )
    existing_key = forms.CharField(
        required=False,
        label="or existing object key",
        widget=forms.TextInput(attrs={"aria-label": "Existing object key"}),
        help_text="Register an object already in the bucket; size and checksum are read from storage.",
    )

    class Meta:
        model = File
        fields = ("path",)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if "path" in self.fields:  # read-only once the version is published
            self.fields["path"].required = False
            self.fields["path"].widget.attrs["aria-label"] = "Path in the version"
            self.fields["path"].disabled = self.instance.pk is not None  # replace a file: remove it, add anew

    def has_changed(self):
        return self.instance.pk is None and super().has_changed()

    def clean(self):
        data = super().clean()
        if self.instance.pk:
            return data  # existing rows are read-only; only deletion is possible
        upload, key = data.get("upload"), (data.get("existing_key") or "").strip()
        if upload and key:
            raise ValidationError("Give either an upload or an existing object key, not both.")
        if not upload and not key:
            raise ValidationError("Choose a file to upload or give an existing object key.")
        if upload and upload.size > INLINE_UPLOAD_LIMIT:
            raise ValidationError(
                f"{upload.name} is {binary_size(upload.size)}; this field takes files up to "
                f"{binary_size(INLINE_UPLOAD_LIMIT)}. Use “Upload large files” at the top of this page: it sends "
                "big files in parts, with progress, and resumes."
            )
        path = (data.get("path") or "").strip() or (upload.name if upload else key.rsplit("/", 1)[-1])
        validate_relative_path(path)
        data["path"] = path
        return data

    def _post_clean(self):
        pass  # rows are created by services, not by ModelForm.save()


class FileFormSet(BaseInlineFormSet):
    def add_fields(self, form, index):
        super().add_fields(form, index)
        if "DELETE" in form.fields:
            form.fields["DELETE"].widget.attrs["aria-label"] = "Remove this file"

    def clean(self):
        """One path, one file: a second row for a path the version (or another new row) has is an
        error on that row, so the whole form is shown again and nothing is saved."""
        super().clean()
        existing = self.instance.files.values_list("path", flat=True) if self.instance.pk else []
        taken = {path: "this version already has it" for path in existing}
        removed = {form.instance.path for form in self.deleted_forms if form.instance.pk}
        for path in removed:
            taken.pop(path, None)
        for form in self.forms:
            data = getattr(form, "cleaned_data", None)
            if form.instance.pk or not data or data.get("DELETE") or not form.has_changed():
                continue
            path = data.get("path")
            if path in taken:
                form.add_error(None, f"Two files cannot share the path {path!r}: {taken[path]}. Nothing was saved.")
            taken.setdefault(path, "another new row has it")


class FileInline(admin.TabularInline):
    model = File
    form = FileForm
    formset = FileFormSet
    extra = 0
    fields = ("path", "upload", "existing_key", "human_size", "short_sha256", "short_key", "verification")
    readonly_fields = ("human_size", "short_sha256", "short_key", "verification")

    def get_fields(self, request, obj=None):
        if obj is None or not obj.is_draft:
            return ("path", "human_size", "short_sha256", "short_key", "verification")
        return self.fields

    def get_readonly_fields(self, request, obj=None):
        if obj is None or not obj.is_draft:
            return ("path", *self.readonly_fields)
        return self.readonly_fields

    def get_extra(self, request, obj=None, **kwargs):
        return 1 if obj is not None and obj.is_draft else 0

    def has_add_permission(self, request, obj=None):
        return obj is not None and obj.is_draft and super().has_add_permission(request, obj)

    def has_change_permission(self, request, obj=None):
        return obj is not None and obj.is_draft and super().has_change_permission(request, obj)

    def has_delete_permission(self, request, obj=None):
        return obj is not None and obj.is_draft and super().has_delete_permission(request, obj)

    @admin.display(description="size")
    def human_size(self, obj):
        if obj.size is None:
            return "-"
        return format_html("{} <small>({} bytes)</small>", binary_size(obj.size), f"{obj.size:,}")

    @admin.display(description="SHA-256")
    def short_sha256(self, obj):
        if not obj.sha256:
            return "-"
        return format_html(
            '<details class="full-value"><summary><code>{}…{}</code></summary><code>{}</code></details>',
            obj.sha256[:12], obj.sha256[-4:], obj.sha256,
        )  # fmt: skip

    @admin.display(description="object key")
    def short_key(self, obj):
        if not obj.key:
            return "-"
        usual = obj.version_id and obj.key == default_object_key(obj.version.model.slug, obj.version.version, obj.path)
        return format_html(
            '<details class="full-value"><summary>{}</summary><code>{}</code></details>',
            "model/version/path" if usual else "custom", obj.key,
        )  # fmt: skip

    @admin.display(description="verification")
    def verification(self, obj):
        return verification_label(obj)


def verification_label(file: File) -> str:
    if file.verified_at is None:
        return file.get_verification_status_display()
    return format_html(
        '<span title="{}">{} ({:%Y-%m-%d %H:%M} UTC)</span>',
        file.verification_detail,
        file.get_verification_status_display(),
        file.verified_at,
    )
