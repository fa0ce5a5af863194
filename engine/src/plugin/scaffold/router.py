"""{{name}}: sends each record to the healthy target with the fewest records
in flight per unit of capacity."""

import wit_world
from wit_world.imports import types

from cdrs_plugin import Decisions, records

# State lives in module globals: componentize-py may create a new WitWorld
# object per call, but the module lives as long as the plugin instance.
TARGETS: list[types.Target] = []
ASSIGNED: list[int] = []  # records routed to each target since update_targets


class WitWorld(wit_world.WitWorld):
    def init(self, config: str) -> types.RouterOptions:
        # Key and offset only: no headers, no payload.
        return types.RouterOptions(headers=[], needs_value=False)

    def update_targets(self, version: int, targets: list[types.Target]) -> None:
        global TARGETS, ASSIGNED
        TARGETS = targets
        ASSIGNED = [0] * len(targets)

    def route(self, batch: types.Batch) -> list[types.Decision]:
        out = []
        healthy = [i for i, t in enumerate(TARGETS) if t.health == types.Health.HEALTHY]
        for _record in records(batch):
            if not healthy:
                # No healthy target: let the host's fallback decide.
                out.append(Decisions.default())
                continue
            best = min(
                healthy,
                key=lambda i: (TARGETS[i].inflight + ASSIGNED[i]) / max(TARGETS[i].capacity, 1),
            )
            ASSIGNED[best] += 1
            out.append(Decisions.route(best))
        return out
