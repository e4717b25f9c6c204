"""The fleet's shape: how many inference nodes, how events are routed, how syncs travel."""

from __future__ import annotations

from dataclasses import dataclass

ROUTINGS = ("sticky-user", "random")


@dataclass(frozen=True)
class FleetConfig:
    nodes: int = 1
    routing: str = "sticky-user"
    multicast: bool = False
    route_feature: str | None = None  # sticky-user: None picks the first feature named *user*

    def __post_init__(self) -> None:
        if not 1 <= self.nodes <= 1024:
            raise ValueError(f"nodes must be in [1, 1024], got {self.nodes}")
        if self.routing not in ROUTINGS:
            raise ValueError(f"routing must be one of {ROUTINGS}, got {self.routing!r}")

    @property
    def transfers_per_sync(self) -> int:
        return 1 if self.multicast else self.nodes
