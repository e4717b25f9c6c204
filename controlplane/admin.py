"""Django admin: policies and nodes editable (the models' clean() gives the API's field errors),
the rest read-only records."""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages

from controlplane.models import (
    Alert,
    ExperimentRun,
    ModelCheckpoint,
    Node,
    NodeAction,
    NodeEvent,
    Policy,
    PolicyVersion,
    TelemetrySample,
)
from controlplane.services.policies import actor_of, save_policy


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False


class PolicyAdminForm(forms.ModelForm):
    reason = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 2}),
        help_text="Why: kept in the version history.",
    )

    class Meta:
        model = Policy
        fields = ["name", "description", *Policy.WIRE_FIELDS]


class PolicyVersionInline(admin.TabularInline):
    model = PolicyVersion
    fields = readonly_fields = ("version", "actor", "reason", "changes", "created")
    extra = 0
    can_delete = False

    def has_add_permission(self, request, obj=None) -> bool:
        return False


@admin.register(Policy)
class PolicyAdmin(admin.ModelAdmin):
    form = PolicyAdminForm
    list_display = ["name", "mode", "r_min", "r_max", "memory_budget_pct", "sla_p99_ms", "version"]
    list_filter = ["mode"]
    search_fields = ["name"]
    readonly_fields = ["version", "updated"]
    inlines = [PolicyVersionInline]

    def save_model(self, request, obj, form, change) -> None:
        reason = form.cleaned_data.get("reason", "")
        save_policy(obj, actor=actor_of(request.user), user=request.user, reason=reason)


@admin.register(Node)
class NodeAdmin(admin.ModelAdmin):
    list_display = ["name", "host", "status", "last_seen", "policy", "applied_policy_version"]
    list_filter = ["status", "policy"]
    search_fields = ["name", "host"]
    readonly_fields = ["status", "last_seen", "applied_policy_version", "created"]
    actions = ["rotate_tokens"]

    def save_model(self, request, obj, form, change) -> None:
        raw = None if change else obj.rotate_token()
        super().save_model(request, obj, form, change)
        if raw:
            self._show_token(request, obj, raw)

    def _show_token(self, request, node: Node, raw: str) -> None:
        messages.warning(request, f"Token of {node.name} (shown only now, store it): {raw}")

    @admin.action(description="Rotate the token of the selected nodes")
    def rotate_tokens(self, request, queryset) -> None:
        for node in queryset:
            raw = node.rotate_token()
            node.save(update_fields=["token_hash"])
            self._show_token(request, node, raw)


@admin.register(ModelCheckpoint)
class ModelCheckpointAdmin(admin.ModelAdmin):
    list_display = ["name", "location", "rollout", "created"]
    list_filter = ["rollout"]
    readonly_fields = ["rollout", "rollout_requested_at", "rollout_completed_at", "created"]


@admin.register(ExperimentRun)
class ExperimentRunAdmin(admin.ModelAdmin):
    list_display = ["name", "dataset_name", "created_by", "created"]
    search_fields = ["name"]
    readonly_fields = ["created_by", "created"]

    def save_model(self, request, obj, form, change) -> None:
        if not change:
            obj.created_by = request.user
        super().save_model(request, obj, form, change)


@admin.register(Alert)
class AlertAdmin(ReadOnlyAdmin):
    list_display = ["kind", "node", "severity", "raised_at", "resolved_at", "acknowledged_by"]
    list_filter = ["kind", "severity"]


@admin.register(NodeAction)
class NodeActionAdmin(ReadOnlyAdmin):
    list_display = ["action", "node", "state", "actor", "created", "finished_at"]
    list_filter = ["action", "state"]


@admin.register(PolicyVersion)
class PolicyVersionAdmin(ReadOnlyAdmin):
    list_display = ["policy", "version", "actor", "reason", "created"]
    list_filter = ["actor"]


@admin.register(NodeEvent)
class NodeEventAdmin(ReadOnlyAdmin):
    list_display = ["kind", "node", "ts", "seq"]
    list_filter = ["kind"]


@admin.register(TelemetrySample)
class TelemetrySampleAdmin(ReadOnlyAdmin):
    list_display = ["node", "seq", "ts", "qps", "p99_ms", "auc", "throttle", "resolution_s"]
    list_filter = ["resolution_s", "throttle"]
    date_hierarchy = "ts"
