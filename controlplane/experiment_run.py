"""The record of one ``liveupdate experiment`` run (a model of the controlplane app, imported by
controlplane.models like the others): its parameters and its results.json, validated by
controlplane.experiments."""

from __future__ import annotations

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models

from controlplane.experiments import validate_results
from nodeworker.protocol import telemetry as protocol_telemetry


class ExperimentRun(models.Model):
    """The parameters and results.json of one ``liveupdate experiment`` run."""

    name = models.CharField(max_length=200, unique=True)
    parameters = models.JSONField(default=dict, blank=True)
    results = models.JSONField()
    notes = models.TextField(blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created"]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        errors: dict[str, list[str]] = {}
        if not isinstance(self.parameters, dict):
            errors["parameters"] = ["Must be a JSON object."]
        for name in ("parameters", "results"):
            problem = protocol_telemetry.json_value_error(getattr(self, name))
            if problem:
                errors[name] = [problem]
        if errors:
            raise ValidationError(errors)
        problems = validate_results(self.results)
        if problems:
            errors["results"] = [
                f"{path}: {msg}" if path else msg for path, msg in problems.items()
            ]
        if errors:
            raise ValidationError(errors)

    @property
    def dataset_name(self) -> str:
        dataset = self.results.get("dataset", {}) if isinstance(self.results, dict) else {}
        return str(dataset.get("name", "")) if isinstance(dataset, dict) else ""
