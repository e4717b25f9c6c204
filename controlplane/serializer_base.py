"""The API's serializer base classes: DRF's ModelSerializer with its fields worked out once per
class, and the mixin that runs a model's clean() so the API and the admin report the same errors."""

from __future__ import annotations

import copy

from django.conf import settings
from django.core.exceptions import ValidationError as DjangoValidationError
from rest_framework import serializers

from controlplane.shortcuts import once_per_class


# DRF's ModelSerializer with its fields worked out once per class (DRF works them out from the
# model, a field and its validators per column, for every serializer, so every request). Each
# serializer gets its own unbound copy, as it gets new fields from DRF. (No docstring: the API
# schema would show it as every serializer's description.)
class ModelSerializer(serializers.ModelSerializer):
    def get_fields(self):
        if "serializer_fields" in settings.LIVEUPDATE_PLAIN_FRAMEWORK:
            return super().get_fields()
        return copy.deepcopy(once_per_class(self, "_fields_template", super().get_fields))


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
