"""What the framework shortcuts of the API (settings.FRAMEWORK_SHORTCUTS) share."""

from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def once_per_class(instance: object, attribute: str, build: Callable[[], T]) -> T:
    """``build()`` worked out once per class of ``instance`` and kept on that class as
    ``attribute`` (looked up in the class's own namespace: a subclass builds its own)."""
    built = type(instance).__dict__.get(attribute)
    if built is None:
        built = build()
        setattr(type(instance), attribute, built)
    return built
