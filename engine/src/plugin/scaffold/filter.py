"""{{name}}: drops records without a key, keeps the rest."""

import wit_world
from wit_world.imports import types

from cdrs_plugin import Verdicts, records


class WitWorld(wit_world.WitWorld):
    def init(self, config: str) -> None:
        pass

    def filter(self, batch: types.Batch) -> list[types.Verdict]:
        return [Verdicts.keep() if r.key is not None else Verdicts.drop() for r in records(batch)]
