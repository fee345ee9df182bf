"""Django admin for maintainers: every change goes through services.py."""

from functools import partial

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.db.models import Count
from django.http import HttpResponseRedirect, JsonResponse
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse

from . import services
from .admin_files import FileInline
from .admin_uploads import upload_urls
from .models import File, MLModel, OutboxEntry, Version
from .rendering import render_markdown


class VersionInline(admin.TabularInline):
    model = Version
    fields = ("version", "status", "prerelease", "published_at")
    readonly_fields = fields
    extra = 0
    show_change_link = True
    can_delete = False
    ordering = ("-sort_key",)

    def has_add_permission(self, request, obj=None):
        return False


class MLModelForm(forms.ModelForm):
    """The model card; tags as one comma-separated line."""

    tag_list = forms.CharField(label="Tags", required=False, help_text="Comma-separated, e.g. tts, chinese.")

    class Meta:
        model = MLModel
        exclude = ("tags",)
        # A link typed without a scheme is https (Django 6's default, asked for now).
        field_classes = {name: partial(forms.URLField, assume_scheme="https")
                         for name in ("homepage_url", "source_url", "paper_url")}  # fmt: skip

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.instance.pk:
            self.fields["tag_list"].initial = ", ".join(self.instance.tags.values_list("name", flat=True))

    def clean_tag_list(self):
        try:
            return services.clean_tags(self.cleaned_data["tag_list"].split(","))
        except services.ReleaseError as error:
            raise ValidationError(str(error)) from error


@admin.register(MLModel)
class MLModelAdmin(admin.ModelAdmin):
    form = MLModelForm
    list_display = ("slug", "name", "license", "version_count", "latest_version")
    list_filter = ("tags",)
    search_fields = ("slug", "name", "summary", "tags__name")
    prepopulated_fields = {"slug": ("name",)}
    inlines = [VersionInline]
    fieldsets = (
        (None, {"fields": ("slug", "name", "summary")}),
        ("Model card", {"fields": ("description", "license", "tag_list", "homepage_url", "source_url", "paper_url")}),
    )

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(version_count=Count("versions"))

    def view_on_site(self, obj):
        return reverse("releases:model", args=[obj.slug])

    @admin.display(description="versions", ordering="version_count")
    def version_count(self, obj):
        return obj.version_count

    @admin.display(description="latest")
    def latest_version(self, obj):
        latest = Version.objects.latest_for(obj)
        return latest.version if latest else "-"

    def get_readonly_fields(self, request, obj=None):
        if obj and File.objects.filter(version__model=obj).exists():
            return ("slug",)  # part of its files' object keys
        return ()

    def get_prepopulated_fields(self, request, obj=None):
        return {} if "slug" in self.get_readonly_fields(request, obj) else self.prepopulated_fields

    def has_delete_permission(self, request, obj=None):
        return super().has_delete_permission(request, obj) and (obj is None or not obj.versions.exists())

    def save_model(self, request, obj, form, change):
        services.save_model_details(obj, tags=form.cleaned_data["tag_list"])


class YankForm(forms.Form):
    reason = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 3, "cols": 60}),
        help_text="Shown to everyone who finds the version, e.g. 'corrupt vocoder weights; use v24'.",
    )


class WithdrawForm(forms.Form):
    reason = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 3, "cols": 60}),
        help_text="Shown on the version's page (410 Gone), e.g. 'weights trained on data we may not share'.",
    )


# The admin's status actions: name -> (label, service call, form asking for extra input or None).
# (Which status may follow which is Version.TRANSITIONS, checked by the services.)
ADMIN_ACTIONS = {
    "publish": ("Publish", lambda version, data: services.change_status(version, "publish"), None),
    "yank": ("Yank", lambda version, data: services.change_status(version, "yank", reason=data["reason"]), YankForm),
    "withdraw": (
        "Withdraw",
        lambda version, data: services.change_status(version, "withdraw", reason=data["reason"]),
        WithdrawForm,
    ),
    "delete_draft": ("Delete draft", lambda version, data: services.delete_draft(version), None),
}
DESTRUCTIVE = {"yank", "withdraw", "delete_draft"}  # styled as dangers; publishing is the primary action
ADMIN_ACTION_HELP = {
    "publish": "Publishing checks that every file is complete and present in storage. Published files "
    "can never change; a change is a new version.",
    "yank": "A yanked version stays downloadable by its exact version, shows the reason, and is never "
    "chosen as latest.",
    "withdraw": "A withdrawn version is gone for good: nothing is signed for it and its URLs answer 410 Gone.",
    "delete_draft": "Deleting a draft removes its file records and the objects uploaded for it.",
}


@admin.register(Version)
class VersionAdmin(admin.ModelAdmin):
    list_display = ("__str__", "model", "version", "status", "prerelease", "file_count", "published_at")
    list_filter = ("status", "prerelease", "model")
    search_fields = ("model__slug", "version", "notes")
    list_select_related = ("model",)
    ordering = ("model__slug", "-sort_key")
    inlines = [FileInline]
    actions = ["publish_selected", "yank_selected", "withdraw_selected", "delete_selected_drafts"]
    change_form_template = "admin/releases/version/change_form.html"

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(file_count=Count("files"))

    def view_on_site(self, obj):
        return reverse("releases:version", args=[obj.model.slug, obj.version])

    @admin.display(description="files", ordering="file_count")
    def file_count(self, obj):
        return obj.file_count

    def get_fields(self, request, obj=None):
        if obj is None:
            return ("model", "version", "prerelease", "notes")
        return ("model", "version", "status", "prerelease", "published_at", "status_reason", "notes")

    def get_readonly_fields(self, request, obj=None):
        if obj is None:
            return ()
        fixed = ("model", "version", "status", "published_at", "status_reason")
        return fixed if obj.is_draft else (*fixed, "prerelease")

    @admin.display(description="reason (yanked or withdrawn)")
    def status_reason(self, obj):
        return obj.yanked_reason or "-"

    def get_actions(self, request):
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)  # published versions are withdrawn, not deleted
        return actions

    def has_delete_permission(self, request, obj=None):
        return super().has_delete_permission(request, obj) and (obj is None or obj.is_draft)

    def delete_model(self, request, obj):
        services.delete_draft(obj)

    def save_model(self, request, obj, form, change):
        if change:
            services.update_version_details(obj, notes=obj.notes, prerelease=obj.prerelease)
            return
        created = services.create_version(obj.model, obj.version, notes=obj.notes, prerelease=obj.prerelease)
        obj.pk, obj._state.adding = created.pk, False

    def save_formset(self, request, form, formset, change):
        if formset.model is not File:
            return super().save_formset(request, form, formset, change)
        version = form.instance
        # Read by the admin's change message.
        formset.new_objects, formset.changed_objects, formset.deleted_objects = [], [], []
        for file_form in formset.deleted_forms:
            if file_form.instance.pk and self._call(request, services.remove_file, file_form.instance):
                formset.deleted_objects.append(file_form.instance)
        for file_form in formset.forms:
            data = getattr(file_form, "cleaned_data", None)
            if file_form.instance.pk or not data or data.get("DELETE") or not file_form.has_changed():
                continue
            if data.get("upload"):
                created = self._call(request, services.add_file, version, data["path"], data["upload"])
            else:
                created = self._call(
                    request, services.register_object, version, data["path"], data["existing_key"].strip()
                )
            if created:
                formset.new_objects.append(created)

    def _call(self, request, service, *args):
        """Run a service and return what it returned (True for nothing); a refusal becomes a message."""
        try:
            result = service(*args)
        except services.ReleaseError as error:
            self.message_user(request, str(error), messages.ERROR)
            return None
        return True if result is None else result

    # --- transitions: changelist actions and change-page buttons share one confirmation page

    @admin.action(description="Publish selected drafts", permissions=["change"])
    def publish_selected(self, request, queryset):
        return self.confirm_transition(request, queryset, "publish")

    @admin.action(description="Yank selected versions", permissions=["change"])
    def yank_selected(self, request, queryset):
        return self.confirm_transition(request, queryset, "yank")

    @admin.action(description="Withdraw selected versions", permissions=["change"])
    def withdraw_selected(self, request, queryset):
        return self.confirm_transition(request, queryset, "withdraw")

    @admin.action(description="Delete selected drafts", permissions=["delete"])
    def delete_selected_drafts(self, request, queryset):
        return self.confirm_transition(request, queryset, "delete_draft")

    def get_urls(self):
        return [
            path("preview/", self.admin_site.admin_view(self.preview_view), name="releases_markdown_preview"),
            path(
                "<int:object_id>/transition/<str:name>/",
                self.admin_site.admin_view(self.transition_view),
                name="releases_version_transition",
            ),
            *upload_urls(self.admin_site),
            *super().get_urls(),
        ]

    def preview_view(self, request):
        """Markdown of notes or a card as the site will show it (rendered and sanitised), for staff."""
        if request.method != "POST":
            return JsonResponse({"error": "POST the text to preview."}, status=405)
        try:
            return JsonResponse({"html": render_markdown(request.POST.get("text", ""), "The text")})
        except ValidationError as error:
            return JsonResponse({"error": " ".join(error.messages)}, status=400)

    def transition_view(self, request, object_id, name):
        version = get_object_or_404(Version, pk=object_id)
        permission = "delete" if name == "delete_draft" else "change"
        if name not in ADMIN_ACTIONS or not getattr(self, f"has_{permission}_permission")(request, version):
            return HttpResponseRedirect(reverse("admin:releases_version_change", args=[object_id]))
        response = self.confirm_transition(request, Version.objects.filter(pk=object_id), name, single=True)
        if response is not None:
            return response
        if name == "delete_draft" and not Version.objects.filter(pk=object_id).exists():
            return HttpResponseRedirect(reverse("admin:releases_version_changelist"))
        return HttpResponseRedirect(reverse("admin:releases_version_change", args=[object_id]))

    def confirm_transition(self, request, queryset, name, *, single=False):
        """Show the confirmation page; on the confirmed POST, apply the service to each version."""
        label, service, form_class = ADMIN_ACTIONS[name]
        versions = list(queryset.select_related("model"))
        confirmed = request.POST.get("confirm") == "yes"
        form = form_class(request.POST if confirmed else None) if form_class else None
        if confirmed and (form is None or form.is_valid()):
            data = form.cleaned_data if form else {}
            done = [version for version in versions if self._call(request, service, version, data)]
            if done:
                self.message_user(request, f"{label}: {', '.join(str(v) for v in done)}.", messages.SUCCESS)
            return None
        context = {
            **self.admin_site.each_context(request),
            "title": f"{label}: are you sure?",
            "opts": self.model._meta,
            "versions": versions,
            "action": name,
            "action_label": label,
            "help": ADMIN_ACTION_HELP[name],
            "form": form,
            "single": single,
            "destructive": name in DESTRUCTIVE,
            "action_checkbox_name": admin.helpers.ACTION_CHECKBOX_NAME,
        }
        return TemplateResponse(request, "admin/releases/version/confirm_transition.html", context)


@admin.register(File)
class FileAdmin(admin.ModelAdmin):
    list_display = ("path", "version", "size", "verification_status", "verified_at", "hashed_at", "warmed_at")
    list_filter = ("verification_status", "version__status", "version__model")
    search_fields = ("path", "key", "sha256", "version__version", "version__model__slug")
    list_select_related = ("version__model",)
    readonly_fields = [field.name for field in File._meta.fields]

    def has_add_permission(self, request):
        return False  # files are added to a draft version

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(OutboxEntry)
class OutboxEntryAdmin(admin.ModelAdmin):
    """CDN work: what is pending, what failed after every retry (and a way to retry it)."""

    list_display = ("kind", "key", "state", "attempts", "next_attempt_at", "last_error", "created_at", "done_at")
    list_filter = ("state", "kind")
    search_fields = ("key", "last_error")
    readonly_fields = [field.name for field in OutboxEntry._meta.fields]
    actions = ["retry_selected"]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    @admin.action(description="Retry selected failed entries", permissions=["view"])
    def retry_selected(self, request, queryset):
        count = services.retry_cdn_work(list(queryset.values_list("pk", flat=True)))
        self.message_user(request, f"{count} entr{'y' if count == 1 else 'ies'} queued again.", messages.SUCCESS)
