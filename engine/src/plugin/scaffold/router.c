/* {{name}}: sends each record to the healthy target with the fewest records
 * in flight per unit of capacity. */
#include "router.h"      /* generated: types and exports of world `router` */
#include "cdrs_plugin.h" /* batch views, config reader */
#include <stdlib.h>

static router_list_target_t targets; /* last update-targets list (owned) */
static uint64_t *assigned;           /* records routed to each since then */

bool exports_router_init(router_string_t *config, router_router_options_t *ret,
                         router_string_t *err) {
    (void)err;
    router_string_free(config);       /* arguments are ours to free */
    ret->headers.len = 0;             /* key and offset only */
    ret->headers.ptr = NULL;
    ret->needs_value = false;
    return true;
}

void exports_router_update_targets(uint64_t version, router_list_target_t *list) {
    (void)version;
    router_list_target_free(&targets); /* drop the previous list, keep this one */
    targets = *list;
    free(assigned);
    assigned = calloc(targets.len ? targets.len : 1, sizeof *assigned);
}

void exports_router_route(router_batch_t *batch, router_list_decision_t *ret) {
    cdrs_batch b = CDRS_BATCH(batch);
    size_t n = cdrs_batch_len(&b);
    ret->len = n;
    ret->ptr = n ? malloc(n * sizeof(router_decision_t)) : NULL;
    for (size_t i = 0; i < n; i++) {
        size_t best = SIZE_MAX;
        double best_load = 0;
        for (size_t t = 0; t < targets.len; t++) {
            router_target_t *tg = &targets.ptr[t];
            if (tg->health != CDRS_PLUGIN_TYPES_HEALTH_HEALTHY) continue;
            double cap = tg->capacity ? (double)tg->capacity : 1.0;
            double load = ((double)tg->inflight + (double)assigned[t]) / cap;
            if (best == SIZE_MAX || load < best_load) {
                best = t;
                best_load = load;
            }
        }
        if (best == SIZE_MAX) {
            ret->ptr[i].tag = CDRS_PLUGIN_TYPES_DECISION_DEFAULT; /* the host decides */
        } else {
            assigned[best]++;
            ret->ptr[i].tag = CDRS_PLUGIN_TYPES_DECISION_ROUTE;
            ret->ptr[i].val.route = (uint32_t)best;
        }
    }
    router_batch_free(batch);
}
