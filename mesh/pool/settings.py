"""The local pool's settings (`mesh up --min-pods/--max-pods/--scale-down-after`): a group of
`mesh up`'s settings (mesh.up.UpSettings), so each is a flag and a MESH_UP_* variable.

Unset (None) means "no pool": `mesh up` runs a fixed set of pods. Any of min_pods, max_pods or
scale_down_after set runs the pool controller (mesh.pool.controller) with the others' defaults.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from mesh.placement.pool import PoolPolicy
from mesh.settings import Group

DEFAULT_MIN_PODS = 1
DEFAULT_MAX_PODS = 4
DEFAULT_SCALE_DOWN_AFTER = 300.0


class PoolSettings(Group):
    """An elastic pool of local pods, sized by the pool-size policy (docs/placement.md)."""

    min_pods: int | None = Field(
        None, ge=0, description="fewest pods; 0 scales to zero (a pool runs when any of "
        f"--min-pods, --max-pods, --scale-down-after is set; then {DEFAULT_MIN_PODS})",
    )  # fmt: skip
    max_pods: int | None = Field(
        None, ge=1, description=f"most pods of the pool (then {DEFAULT_MAX_PODS})"
    )
    scale_down_after: float | None = Field(
        None, ge=0, description="seconds the pool must need fewer pods before one drains "
        f"(then {DEFAULT_SCALE_DOWN_AFTER:g})",
    )  # fmt: skip
    pool_window: float | None = Field(
        None, gt=0, description="seconds a model counts as in use after its last request "
        "(unset: --scale-down-after)",
    )  # fmt: skip
    pool_interval: float = Field(1.0, gt=0, description="seconds between the pool's decisions")
    pool_handoff_timeout: float = Field(
        30.0, ge=0, description="seconds a drained pod waits for its models in use to be "
        "loaded on the pods that stay",
    )  # fmt: skip
    pool_metrics_port: int = Field(
        0, ge=0, le=65535, description="the pool controller's Prometheus port (0: a free one)"
    )

    @property
    def enabled(self) -> bool:
        return any(v is not None for v in (self.min_pods, self.max_pods, self.scale_down_after))

    @property
    def low(self) -> int:
        return DEFAULT_MIN_PODS if self.min_pods is None else self.min_pods

    @property
    def high(self) -> int:
        return max(DEFAULT_MAX_PODS, self.low) if self.max_pods is None else self.max_pods

    @property
    def idle(self) -> float:
        return DEFAULT_SCALE_DOWN_AFTER if self.scale_down_after is None else self.scale_down_after

    @model_validator(mode="after")
    def _bounds(self) -> PoolSettings:
        if self.enabled and self.low > self.high:
            raise ValueError(f"--min-pods {self.low} is above --max-pods {self.high}")
        return self

    def policy(self, pod_capacity: int) -> PoolPolicy:
        return PoolPolicy(
            min_pods=self.low,
            max_pods=self.high,
            window=self.pool_window if self.pool_window is not None else max(self.idle, 1.0),
            scale_down_after=self.idle,
            pod_capacity=pod_capacity,
        )
