"""From resolved aliases to the ``version_policy`` and ``routing`` a model's ``model.yaml`` should hold.

Pure functions: the sync loop resolves the aliases, these decide what the file
says, and the repository's hot reload does the rest (so every worker process and
every restart sees the same thing, which an in-memory override would not give).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.core.registry_config import RegistryModelConfig

# Fields of model.yaml the registry client writes; everything else is the operator's (or the
# champion artifact's model.yaml).
MANAGED_FIELDS = ("version_policy", "routing")


@dataclass(frozen=True, slots=True)
class Assignment:
    """Which versions serve in which role, from one poll of the aliases."""

    live: int
    canaries: dict[int, float] = field(default_factory=dict)  # version -> percent of traffic
    shadows: dict[int, float] = field(default_factory=dict)  # version -> fraction of live requests copied

    @property
    def versions(self) -> list[int]:
        return sorted({self.live, *self.canaries, *self.shadows})


def assign(reg: RegistryModelConfig, resolved: Mapping[str, int | None]) -> Assignment | None:
    """None when the live alias points nowhere: then nothing is changed and what serves keeps serving.

    A version named by several aliases takes the strongest role (live > canary > shadow).
    """
    live = resolved.get(reg.live_alias)
    if live is None:
        return None
    canaries: dict[int, float] = {}
    shadows: dict[int, float] = {}
    for alias, role in reg.aliases.items():
        v = resolved.get(alias)
        if v is None or v == live:
            continue
        if role.role == "canary":
            canaries[v] = canaries.get(v, 0.0) + role.weight
            shadows.pop(v, None)
        elif role.role == "shadow" and v not in canaries:
            shadows[v] = max(shadows.get(v, 0.0), role.fraction)
    return Assignment(live, canaries, shadows)


def routing_section(reg: RegistryModelConfig, a: Assignment) -> dict[str, Any] | None:
    """The ``routing:`` mapping for an assignment; None when the live version alone answers."""
    template = reg.routing.model_dump(mode="json", exclude_defaults=True)
    if not a.canaries:
        template.pop("rollback", None)  # it guards canaries; with none it is not valid
    if not a.canaries and not a.shadows and not template:
        return None
    routing = dict(template)
    live_share = 100.0 - sum(a.canaries.values())
    routing["weights"] = {a.live: live_share, **a.canaries}
    routing["champion"] = a.live
    if a.canaries and reg.fallback_to_live:
        routing["fallback"] = a.live
    if a.shadows:
        routing["shadows"] = list(template.get("shadows", [])) + [
            {"version": v, "fraction": f} for v, f in sorted(a.shadows.items())
        ]
    return routing


def managed_doc(base: dict[str, Any], registry_raw: Any, reg: RegistryModelConfig, a: Assignment) -> dict[str, Any]:
    """``base`` (the model's settings) with the registry section kept and the managed fields written."""
    out = {k: v for k, v in base.items() if k not in MANAGED_FIELDS and k != "registry"}
    if registry_raw is not None:  # None: followed through the server's registry_models setting
        out["registry"] = registry_raw
    out["version_policy"] = {"specific": a.versions}
    routing = routing_section(reg, a)
    if routing is not None:
        out["routing"] = routing
    return out
