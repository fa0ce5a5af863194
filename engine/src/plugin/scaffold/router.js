// {{name}}: sends each record to the healthy target with the fewest records
// in flight per unit of capacity.
import { Decision, records } from 'cdrs-plugin';

// Module state: one copy per plugin instance, called from one thread at a time.
let targets = [];
let assigned = []; // records routed to each target since the last updateTargets

export function init(config) {
  // Key and offset only: no headers, no payload.
  return { headers: [], needsValue: false };
}

export function updateTargets(version, newTargets) {
  targets = newTargets;
  assigned = newTargets.map(() => 0);
}

export function route(batch) {
  return records(batch).map(() => {
    let best = -1;
    let bestLoad = Infinity;
    targets.forEach((t, i) => {
      if (t.health !== 'healthy') return;
      const load = (t.inflight + assigned[i]) / Math.max(t.capacity, 1);
      if (load < bestLoad) {
        best = i;
        bestLoad = load;
      }
    });
    if (best < 0) return Decision.default(); // no healthy target: the host decides
    assigned[best] += 1;
    return Decision.route(best);
  });
}
