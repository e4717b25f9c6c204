"""The mixin that runs a model's clean() in the API's serializers, so the API and the admin report
the same errors."""

from __future__ import annotations

from django.core.exceptions import ValidationError as DjangoValidationError
from rest_framework import serializers


class ModelCleanMixin:
    """Run the model's clean() on the would-be instance, so the API reports exactly the field
    errors the admin reports."""

    def validate(self, attrs):
        attrs = super().validate(attrs)
        model = self.Meta.model
        instance = model(**{k: v for k, v in attrs.items() if k in self._plain_fields(model)})
        if self.instance is not None:
            for f in model._meta.concrete_fields:
                if f.attname not in attrs and f.name not in attrs:
                    setattr(instance, f.attname, getattr(self.instance, f.attname))
        try:
            instance.clean()
        except DjangoValidationError as exc:
            raise serializers.ValidationError(exc.message_dict) from None
        return attrs

    @staticmethod
    def _plain_fields(model) -> set[str]:
        return {f.name for f in model._meta.concrete_fields}
