"""The ``registry:`` section of ``model.yaml``: which registered model this is and what its aliases mean.

With this section (and the server's ``registry_url`` set) the registry client
owns the file's ``version_policy`` and ``routing``: it writes them from the
aliases it resolves. Routing options the operator wants kept (sticky key,
rollback guard, fallback, shadows to other models) go in ``registry.routing``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from gateway.core.routing_config import RoutingConfig


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AliasRole(_Strict):
    # live: answers requests (exactly one alias); canary: gets `weight` percent of the
    # traffic; shadow: gets a copy of `fraction` of the live requests, never answers.
    role: Literal["live", "canary", "shadow"]
    weight: float = Field(default=10.0, gt=0, lt=100)
    fraction: float = Field(default=1.0, gt=0, le=1)


def _default_aliases() -> dict[str, AliasRole]:
    return {"champion": AliasRole(role="live"), "challenger": AliasRole(role="canary")}


class RegistryModelConfig(_Strict):
    # The registered model's name in MLflow ("" = the model's directory name).
    model_name: str = ""
    aliases: dict[str, AliasRole] = Field(default_factory=_default_aliases)
    # Routing options kept across alias changes; weights and champion come from the aliases.
    routing: RoutingConfig = RoutingConfig()
    # A canary that fails a request (error, timeout, queue full) hands it to the live version.
    fallback_to_live: bool = True

    @field_validator("aliases")
    @classmethod
    def _one_live(cls, v: dict[str, AliasRole]) -> dict[str, AliasRole]:
        live = [a for a, r in v.items() if r.role == "live"]
        if len(live) != 1:
            raise ValueError(f"exactly one alias must have role 'live' (found {len(live)}: {live})")
        canary_share = sum(r.weight for r in v.values() if r.role == "canary")
        if canary_share >= 100:
            raise ValueError(f"canary weights add up to {canary_share}%: the live version needs some traffic")
        return v

    @model_validator(mode="after")
    def _routing_template(self) -> RegistryModelConfig:
        r = self.routing
        if r.weights or r.champion is not None or r.fallback is not None:
            raise ValueError("routing.weights, champion and fallback are set from the aliases; leave them out")
        if any(not s.model for s in r.shadows):
            raise ValueError("routing.shadows of this model come from aliases with role 'shadow'; "
                             "list only shadows to other models here")
        if r.rollback is not None and not any(a.role == "canary" for a in self.aliases.values()):
            raise ValueError("routing.rollback guards a canary: give an alias the role 'canary'")
        return self

    @property
    def live_alias(self) -> str:
        return next(a for a, r in self.aliases.items() if r.role == "live")
