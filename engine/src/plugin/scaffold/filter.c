/* {{name}}: drops records without a key, keeps the rest. */
#include "filter.h"      /* generated: types and exports of world `filter` */
#include "cdrs_plugin.h" /* batch views, config reader */
#include <stdlib.h>

bool exports_filter_init(filter_string_t *config, filter_string_t *err) {
    (void)err;
    filter_string_free(config); /* arguments are ours to free */
    return true;
}

void exports_filter_filter(filter_batch_t *batch, filter_list_verdict_t *ret) {
    cdrs_batch b = CDRS_BATCH(batch);
    size_t n = cdrs_batch_len(&b);
    ret->len = n;
    ret->ptr = n ? malloc(n * sizeof(filter_verdict_t)) : NULL;
    for (size_t i = 0; i < n; i++) {
        cdrs_record rec;
        cdrs_batch_record(&b, i, &rec);
        ret->ptr[i].tag = rec.has_key ? CDRS_PLUGIN_TYPES_VERDICT_KEEP
                                      : CDRS_PLUGIN_TYPES_VERDICT_DROP;
    }
    filter_batch_free(batch);
}
