/*
 * Native tests of plugins/example-router-c/router.c (the policy of
 * sdk/example-policy.md) and of sdk/c/cdrs_plugin.h, with gcc and the
 * generated bindings: run by sdk/c/test/run.sh. The router source is
 * included so its static functions can be tested.
 */
#include "../../../plugins/example-router-c/router.c"
#include "test_util.h"

/* Natively the component-type object (a wasm object file) is not linked. */
void __component_type_object_force_link_router(void) {}

/* ---- helpers ---------------------------------------------------------- */

/* init with `cfg`; on success fills `headers` (joined by ',') and returns 1;
 * on failure copies the message into `err` and returns 0. */
static int init_cfg(const char *cfg, char *headers, char *err) {
    router_string_t c;
    TW_STRING(c, cfg);
    router_router_options_t opts;
    router_string_t e;
    headers[0] = err[0] = 0;
    if (!exports_router_init(&c, &opts, &e)) {
        memcpy(err, e.ptr, e.len);
        err[e.len] = 0;
        CHECK(cdrs_utf8_valid(e.ptr, e.len), "error text is UTF-8");
        router_string_free(&e);
        return 0;
    }
    CHECK(!opts.needs_value, "never needs the value");
    for (size_t i = 0; i < opts.headers.len; i++) {
        if (i) strcat(headers, ",");
        strncat(headers, (const char *)opts.headers.ptr[i].ptr, opts.headers.ptr[i].len);
    }
    router_router_options_free(&opts);
    return 1;
}

typedef struct tspec {
    const char *id;
    uint32_t capacity, inflight, weight;
    cdrs_plugin_types_health_t health;
} tspec;

#define W0 0xffffffffu /* weight 0 (0 in a tspec means the default 100) */
#define H CDRS_PLUGIN_TYPES_HEALTH_HEALTHY
#define D CDRS_PLUGIN_TYPES_HEALTH_DEGRADED
#define X CDRS_PLUGIN_TYPES_HEALTH_DOWN

static void set_targets(const tspec *ts, size_t n) {
    router_list_target_t l;
    l.len = n;
    l.ptr = n ? calloc(n, sizeof(router_target_t)) : NULL;
    for (size_t i = 0; i < n; i++) {
        router_target_t *t = &l.ptr[i];
        TW_STRING(t->id, ts[i].id);
        t->zone.is_some = true;
        TW_STRING(t->zone.val, "z1");
        t->labels.len = 1;
        t->labels.ptr = malloc(sizeof(router_tuple2_string_string_t));
        TW_STRING(t->labels.ptr[0].f0, "k");
        TW_STRING(t->labels.ptr[0].f1, "v");
        t->weight = ts[i].weight == 0 ? 100 : ts[i].weight == W0 ? 0 : ts[i].weight;
        t->capacity = ts[i].capacity;
        t->inflight = ts[i].inflight;
        t->health = ts[i].health;
    }
    exports_router_update_targets(7, &l);
}

/* Routes one record per key (NULL: no key; `hdr_*`: one header each, when
 * hdr_key is set); out[i] = target index, -1 for default. */
static void route_full(size_t n, const char *const *keys, const char *hdr_key,
                       const char *const *hdr_vals, int *out) {
    tw_batch t = {0};
    for (size_t i = 0; i < n; i++) {
        tw_hdr h = {hdr_key, hdr_vals ? hdr_vals[i] : NULL, (size_t)-1};
        tw_push(&t, (int64_t)i, 0, 0, keys ? keys[i] : NULL, (size_t)-1, NULL, 0,
                hdr_key ? 1 : 0, &h);
    }
    router_batch_t b;
    TW_BATCH(b, t);
    router_list_decision_t ret;
    exports_router_route(&b, &ret);
    CHECK(ret.len == n, "one decision per record: %zu of %zu", ret.len, n);
    for (size_t i = 0; i < n && i < ret.len; i++) {
        if (ret.ptr[i].tag == CDRS_PLUGIN_TYPES_DECISION_DEFAULT) out[i] = -1;
        else if (ret.ptr[i].tag == CDRS_PLUGIN_TYPES_DECISION_ROUTE) out[i] = (int)ret.ptr[i].val.route;
        else out[i] = -2;
    }
    router_list_decision_free(&ret);
}

static void route_none(size_t n, int *out) { route_full(n, NULL, NULL, NULL, out); }

static int all_eq(const int *d, size_t n, int v) {
    for (size_t i = 0; i < n; i++)
        if (d[i] != v) return 0;
    return 1;
}

static int count_eq(const int *d, size_t n, int v) {
    int c = 0;
    for (size_t i = 0; i < n; i++) c += d[i] == v;
    return c;
}

/* ---- tests ------------------------------------------------------------ */

static void hash_and_rng_match_the_spec(void) {
    uint32_t s = 1;
    uint32_t a = xorshift32(&s), b = xorshift32(&s), c = xorshift32(&s);
    CHECK(a == 270369u && b == 67634689u && c == 2647435461u, "%u %u %u", a, b, c);
    CHECK(s == 2647435461u, "state is the last output");
    uint32_t h = fnv1a32_from(FNV1A32_BASIS, (const uint8_t *)"a", 1);
    CHECK(h == 0xE40C292Cu, "%08x", h);
    uint32_t ab = fnv1a32_from(fnv1a32_from(FNV1A32_BASIS, (const uint8_t *)"a", 1),
                               (const uint8_t *)"b", 1);
    CHECK(ab == fnv1a32_from(FNV1A32_BASIS, (const uint8_t *)"ab", 2), "chained = whole");
    CHECK(fnv1a32_from(FNV1A32_BASIS, NULL, 0) == 0x811C9DC5u, "empty = basis");
    CHECK(fmix32(0xE40C292Cu) == 0x1A80B1B3u, "%08x", fmix32(0xE40C292Cu));
    CHECK(fmix32(0) == 0 && fmix32(1) == 0x514E28B7u, "fmix32(1) = %08x", fmix32(1));
}

static void config_is_checked(void) {
    static const char *bad[] = {
        "{\"seed\": 0}", "{\"seed\": 4294967296}", "{\"seed\": true}", "{\"seed\": null}",
        "{\"seed\": -1}", "{\"seed\": -0}", "{\"seed\": 1.0}", "{\"seed\": 1e3}",
        "{\"seed\": 99999999999999999999999}", "{\"seed\": \"5\"}", "{\"seed\": 01}",
        "{\"sticky\": 1}", "{\"sticky\": null}", "{\"sticky\": \"true\"}",
        "{\"sticky_header\": 5}", "{\"sticky_header\": [\"a\"]}", "{\"sticky_header\": {}}",
        "{\"colour\": \"red\"}", "{\"Sticky\": true}", "[]", "null", "\"x\"", "1", "{",
        "{\"seed\": 1} x", "{\"seed\": 1,}", "{\"sticky\": true, \"sticky\": false}",
        "{\"seed\" 1}", "{seed: 1}", "{'seed': 1}", "{\"sticky\": tru}",
        "{\"sticky_header\": \"\\ud800\"}", "{\"sticky_header\": \"\\x\"}",
        "{\"sticky_header\": \"a\nb\"}", "\xc2\xa0{}",
    };
    char hs[256], err[256];
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        CHECK(!init_cfg(bad[i], hs, err), "accepted bad config %s", bad[i]);
        CHECK(strncmp(err, "invalid config: ", 16) == 0, "message for %s: %s", bad[i], err);
    }
    init_cfg("{\"colour\": \"red\"}", hs, err);
    CHECK(strstr(err, "unknown key \"colour\"") != NULL, "%s", err);
    init_cfg("{\"seed\": 0}", hs, err);
    CHECK(strstr(err, "\"seed\"") && strstr(err, "1..=4294967295"), "%s", err);
    init_cfg("{\"sticky\": 1}", hs, err);
    CHECK(strstr(err, "key \"sticky\" must be a boolean, not an integer") != NULL, "%s", err);

    static const char *good[] = {
        "", "  \n\t", "\xe3\x80\x80", "{}", " { } ", "{\"seed\": 4294967295}", "{\"seed\": 1}",
        "{\"sticky\": false, \"sticky_header\": null, \"seed\": 7}",
        "{\"se\\u0065d\": 5}",
    };
    for (size_t i = 0; i < sizeof good / sizeof *good; i++) {
        CHECK(init_cfg(good[i], hs, err), "refused good config %s: %s", good[i], err);
        CHECK(hs[0] == 0, "no headers for %s", good[i]);
    }
    CHECK(init_cfg("{\"sticky\": true, \"sticky_header\": \"x-client\"}", hs, err), "%s", err);
    CHECK(strcmp(hs, "x-client") == 0, "headers %s", hs);
    CHECK(init_cfg("{\"sticky_header\": \"\\u00e9\\ud83d\\ude00\\/\"}", hs, err), "%s", err);
    CHECK(strcmp(hs, "\xc3\xa9\xf0\x9f\x98\x80/") == 0, "decoded header %s", hs);
    /* the seed is the initial state */
    CHECK(init_cfg("{\"seed\": 42}", hs, err) && R.rng == 42, "rng %u", R.rng);
    CHECK(init_cfg("", hs, err) && R.rng == 1 && !R.sticky, "defaults");
}

static void exact_draws_and_tie_breaks(void) {
    char hs[64], err[256];
    int d[4];
    /* seed 1, two equal targets: p = 270369 % 2 = 1, q = 67634689 % 1 = 0 ->
     * a = 1, b = 0; equal loads, equal weights: the lower index, 0. Then
     * p = 2647435461 % 2 = 1, q = 0: load(1) = 0 < load(0): 1. */
    init_cfg("{}", hs, err);
    tspec two[] = {{"a", 100, 0, 0, H}, {"b", 100, 0, 0, H}};
    set_targets(two, 2);
    route_none(2, d);
    CHECK(d[0] == 0 && d[1] == 1, "%d %d", d[0], d[1]);
    CHECK(R.assigned[0] == 1 && R.assigned[1] == 1, "assigned counts");
    /* equal loads (0), different w: the greater w (b, capacity 200) */
    init_cfg("{}", hs, err);
    tspec wdiff[] = {{"a", 100, 0, 0, H}, {"b", 200, 0, 0, H}};
    set_targets(wdiff, 2);
    route_none(1, d);
    CHECK(d[0] == 1, "greater w wins a load tie: %d", d[0]);
    /* same w from a different product: capacity 200 x weight 50 = 100 x 100 */
    init_cfg("{}", hs, err);
    tspec wsame[] = {{"a", 100, 0, 100, H}, {"b", 200, 0, 50, H}};
    set_targets(wsame, 2);
    route_none(1, d);
    CHECK(d[0] == 0, "equal w: lower index: %d", d[0]);
    /* loads compared as doubles: 1/3 vs 2/6 (equal) -> greater w (b) */
    init_cfg("{}", hs, err);
    tspec thirds[] = {{"a", 3, 1, 1, H}, {"b", 6, 2, 1, H}};
    set_targets(thirds, 2);
    route_none(1, d);
    CHECK(d[0] == 1, "1/3 == 2/6: %d", d[0]);
    /* one eligible target: no draw */
    init_cfg("{}", hs, err);
    tspec one[] = {{"a", 100, 0, 0, X}, {"b", 100, 0, 0, H}};
    set_targets(one, 2);
    route_none(3, d);
    CHECK(all_eq(d, 3, 1) && R.rng == 1, "single target, rng untouched (%u)", R.rng);
    /* update-targets resets the counts, keeps the rng */
    uint32_t rng = R.rng;
    set_targets(two, 2);
    CHECK(R.assigned[0] == 0 && R.assigned[1] == 0 && R.rng == rng, "reset on update");
}

static void down_and_draining_targets_get_nothing_while_a_healthy_one_exists(void) {
    char hs[64], err[256];
    int d[50];
    init_cfg("{}", hs, err);
    tspec ts[] = {{"a", 100, 0, 0, X}, {"b", 100, 0, 0, D}, {"c", 100, 0, 0, H},
                  {"d", 0, 0, 0, H}};
    set_targets(ts, 4);
    route_none(50, d);
    CHECK(all_eq(d, 50, 2), "all to c");
    tspec ts2[] = {{"a", 100, 0, 0, X}, {"b", 100, 0, 0, D}};
    set_targets(ts2, 2);
    route_none(1, d);
    CHECK(d[0] == 1, "only draining left: %d", d[0]);
    set_targets(NULL, 0);
    uint32_t rng = R.rng;
    route_none(2, d);
    CHECK(d[0] == -1 && d[1] == -1 && R.rng == rng, "none: default");
    tspec down[] = {{"a", 100, 0, 0, X}, {"b", 0, 0, 0, D}};
    set_targets(down, 2);
    route_none(1, d);
    CHECK(d[0] == -1, "down and zero-capacity: default");
    /* weight 0 is never eligible */
    tspec w0[] = {{"a", 100, 0, W0, H}, {"b", 100, 0, 0, D}, {"c", 100, 0, 0, H}};
    set_targets(w0, 3);
    route_none(20, d);
    CHECK(all_eq(d, 20, 2), "weight 0: not eligible");
    tspec w00[] = {{"a", 100, 0, W0, H}, {"b", 100, 0, W0, D}};
    set_targets(w00, 2);
    route_none(1, d);
    CHECK(d[0] == -1, "all weight 0: default");
}

static void split_follows_capacity_and_inflight(void) {
    char hs[64], err[256];
    static int d[400];
    init_cfg("{}", hs, err);
    tspec ts[] = {{"a", 100, 0, 0, H}, {"b", 300, 0, 0, H}};
    set_targets(ts, 2);
    route_none(400, d);
    int to_b = count_eq(d, 400, 1);
    CHECK(to_b >= 290 && to_b <= 310, "b got %d of 400", to_b);
    init_cfg("{}", hs, err);
    tspec full[] = {{"a", 100, 100, 0, H}, {"b", 100, 0, 0, H}};
    set_targets(full, 2);
    route_none(100, d);
    CHECK(all_eq(d, 100, 1), "full target gets none");
}

static void sticky_keys_keep_their_target_and_only_a_lost_targets_keys_move(void) {
    char hs[64], err[256];
    static char kb[60][24];
    const char *keys[60];
    int first[60], again[60], after[60];
    for (int i = 0; i < 60; i++) {
        snprintf(kb[i], sizeof kb[i], "client-%d", i);
        keys[i] = kb[i];
    }
    tspec ts[] = {{"a", 100, 0, 0, H}, {"b", 100, 0, 0, H}, {"c", 100, 0, 0, H}};
    init_cfg("{\"sticky\": true}", hs, err);
    set_targets(ts, 3);
    uint32_t rng = R.rng;
    route_full(60, keys, NULL, NULL, first);
    route_full(60, keys, NULL, NULL, again);
    CHECK(memcmp(first, again, sizeof first) == 0, "same keys, same targets");
    CHECK(R.rng == rng, "sticky routing draws nothing");
    for (int t = 0; t < 3; t++) CHECK(count_eq(first, 60, t) > 5, "spread to %d", t);
    /* the expected target is the rendezvous winner */
    for (int i = 0; i < 60; i++) {
        uint32_t best = 0;
        int bi = -1;
        for (int t = 0; t < 3; t++) {
            uint32_t h = fnv1a32_from(FNV1A32_BASIS, (const uint8_t *)ts[t].id, 1);
            h = fnv1a32_from(h, (const uint8_t *)"", 1);
            h = fmix32(fnv1a32_from(h, (const uint8_t *)keys[i], strlen(keys[i])));
            if (bi < 0 || h > best) best = h, bi = t;
        }
        CHECK(first[i] == bi, "key %s: %d, want %d", keys[i], first[i], bi);
    }
    tspec down[] = {{"a", 100, 0, 0, H}, {"b", 100, 0, 0, X}, {"c", 100, 0, 0, H}};
    set_targets(down, 3);
    route_full(60, keys, NULL, NULL, after);
    for (int i = 0; i < 60; i++) {
        CHECK(after[i] != 1, "nothing to the down target");
        if (first[i] != 1) CHECK(first[i] == after[i], "a key of a live target moved");
    }
    /* a record without a key draws; an empty key is a key */
    const char *mixed[] = {NULL, ""};
    int d[2];
    rng = R.rng;
    route_full(1, mixed, NULL, NULL, d);
    CHECK(R.rng != rng, "no key: two choices");
    rng = R.rng;
    route_full(1, mixed + 1, NULL, NULL, d);
    CHECK(R.rng == rng, "empty key: sticky");
    /* equal scores (equal ids): the lower index */
    tspec twins[] = {{"x", 100, 0, 0, X}, {"x", 100, 0, 0, H}, {"x", 100, 0, 0, H}};
    set_targets(twins, 3);
    route_full(1, keys, NULL, NULL, d);
    CHECK(d[0] == 1, "tie: lower index, got %d", d[0]);
}

static void sticky_header_is_the_first_header_with_that_key(void) {
    char hs[64], err[256];
    tspec ts[] = {{"a", 100, 0, 0, H}, {"b", 100, 0, 0, H}, {"c", 100, 0, 0, H}};
    CHECK(init_cfg("{\"sticky\": true, \"sticky_header\": \"x-client\"}", hs, err), "%s", err);
    set_targets(ts, 3);
    const char *keys[] = {"k1", "k2", "k3", "k4"};
    const char *vals[] = {"client-1", "client-1", "client-1", "client-1"};
    int d[4], d2[4];
    route_full(4, keys, "x-client", vals, d);
    CHECK(all_eq(d, 4, d[0]), "same header value, same target whatever the key");
    /* null header value: no key -> two choices (draws) */
    uint32_t rng = R.rng;
    route_full(1, keys, "x-client", NULL, d2);
    CHECK(R.rng != rng, "null header: no sticky key");
    /* absent header: no sticky key, the record key is not used */
    rng = R.rng;
    route_full(1, keys, "other", vals, d2);
    CHECK(R.rng != rng, "absent header: no sticky key");
    /* first header counts, even if null and a later one has a value */
    tw_batch t = {0};
    tw_hdr hs2[] = {{"x-client", NULL, 0}, {"x-client", "client-1", (size_t)-1}};
    tw_push(&t, 0, 0, 0, "k", (size_t)-1, NULL, 0, 2, hs2);
    router_batch_t b;
    TW_BATCH(b, t);
    router_list_decision_t ret;
    rng = R.rng;
    exports_router_route(&b, &ret);
    CHECK(ret.len == 1 && R.rng != rng, "first header null: no key");
    router_list_decision_free(&ret);
    /* sticky_header set but sticky false: headers asked for, not used */
    CHECK(init_cfg("{\"sticky_header\": \"x-client\"}", hs, err) && strcmp(hs, "x-client") == 0,
          "%s", hs);
    set_targets(ts, 3);
    rng = R.rng;
    route_full(1, keys, "x-client", vals, d2);
    CHECK(R.rng != rng, "not sticky: draws");
}

static void batch_view_reads_the_layout(void) {
    tw_batch t = {0};
    tw_hdr h0[] = {{"a", "x", (size_t)-1}, {"n", NULL, 0}};
    tw_push(&t, 7, 1, 1700, "k1", (size_t)-1, "v1", (size_t)-1, 2, h0);
    tw_push(&t, 8, 0, 0, NULL, 0, NULL, 0, 0, NULL);
    tw_hdr h2[] = {{"b", "", 0}};
    tw_push(&t, 9, 1, -1, "", 0, "v3", (size_t)-1, 1, h2);
    cdrs_batch b = cdrs_batch_new(t.records.ptr, t.records.len, t.headers.ptr, t.headers.len,
                                  t.data.ptr, t.data.len);
    cdrs_record r;
    cdrs_header h;
    const uint8_t *v;
    uint32_t vl;
    CHECK(cdrs_batch_len(&b) == 3, "len");
    CHECK(cdrs_batch_record(&b, 0, &r) && r.offset == 7 && r.has_timestamp &&
              r.timestamp_ms == 1700,
          "record 0");
    CHECK(r.has_key && r.key_len == 2 && memcmp(r.key, "k1", 2) == 0, "key");
    CHECK(r.has_value && r.value_len == 2 && memcmp(r.value, "v1", 2) == 0, "value");
    CHECK(r.header_count == 2, "headers");
    CHECK(cdrs_record_header_at(&b, &r, 0, &h) && h.key_len == 1 && h.key[0] == 'a' &&
              h.has_value && h.value_len == 1,
          "header 0");
    CHECK(cdrs_record_header_at(&b, &r, 1, &h) && !h.has_value, "header 1 null");
    CHECK(!cdrs_record_header_at(&b, &r, 2, &h), "no header 2");
    CHECK(cdrs_record_header(&b, &r, "a", &v, &vl) == CDRS_HEADER_VALUE && vl == 1 && *v == 'x',
          "header a");
    CHECK(cdrs_record_header(&b, &r, "n", &v, &vl) == CDRS_HEADER_NULL, "header n");
    CHECK(cdrs_record_header(&b, &r, "zz", &v, &vl) == CDRS_HEADER_ABSENT, "header zz");
    CHECK(cdrs_batch_record(&b, 1, &r) && !r.has_timestamp && !r.has_key && !r.has_value &&
              r.header_count == 0,
          "record 1");
    CHECK(cdrs_batch_record(&b, 2, &r) && r.timestamp_ms == -1 && r.has_key && r.key_len == 0,
          "record 2");
    CHECK(cdrs_record_header(&b, &r, "b", &v, &vl) == CDRS_HEADER_VALUE && vl == 0, "empty value");
    CHECK(!cdrs_batch_record(&b, 3, &r), "no record 3");
    free(t.records.ptr);
    free(t.headers.ptr);
    free(t.data.ptr);

    /* garbage reads as empty, never out of bounds */
    uint8_t recs[40 * 2 + 3];
    memset(recs, 0xff, sizeof recs);
    uint8_t hdrs[3] = {1, 2, 3};
    b = cdrs_batch_new(recs, sizeof recs, hdrs, 3, (const uint8_t *)"abc", 3);
    CHECK(cdrs_batch_len(&b) == 2, "whole entries only");
    for (size_t i = 0; i < 2; i++) {
        cdrs_batch_record(&b, i, &r);
        CHECK(!r.has_key && r.header_count == 0, "garbage record %zu", i);
    }
    uint8_t one[40] = {0};
    one[20] = 200; /* key length 200 at start 0: out of range */
    b = cdrs_batch_new(one, 40, NULL, 0, (const uint8_t *)"abc", 3);
    cdrs_batch_record(&b, 0, &r);
    CHECK(r.has_key && r.key_len == 0, "out-of-range key reads as empty");
    /* a header key that is not UTF-8 reads as "" */
    tw_batch t2 = {0};
    tw_hdr bad[] = {{"\xff\xfe", "v", (size_t)-1}};
    tw_push(&t2, 0, 0, 0, NULL, 0, NULL, 0, 1, bad);
    b = cdrs_batch_new(t2.records.ptr, t2.records.len, t2.headers.ptr, t2.headers.len,
                       t2.data.ptr, t2.data.len);
    cdrs_batch_record(&b, 0, &r);
    CHECK(cdrs_record_header_at(&b, &r, 0, &h) && h.key_len == 0, "non-UTF-8 key");
    CHECK(cdrs_record_header(&b, &r, "", &v, &vl) == CDRS_HEADER_VALUE, "matches \"\"");
    CHECK(cdrs_record_header(&b, &r, "\xff\xfe", &v, &vl) == CDRS_HEADER_ABSENT,
          "not its raw bytes");
    free(t2.records.ptr);
    free(t2.headers.ptr);
    free(t2.data.ptr);
}

static void text_helpers(void) {
    char buf[8];
    cdrs_text t = {buf, sizeof buf, 0};
    cdrs_text_append(&t, "abcd\xc3\xa9\xc3\xa9"); /* 8 bytes into room for 7 */
    CHECK(strcmp(buf, "abcd\xc3\xa9") == 0, "cut on a character boundary: %s", buf);
    char d[21];
    CHECK(cdrs_fmt_u64(d, 0) == 1 && strcmp(d, "0") == 0, "0");
    CHECK(cdrs_fmt_u64(d, UINT64_MAX) == 20 && strcmp(d, "18446744073709551615") == 0, "max");
    CHECK(cdrs_utf8_valid((const uint8_t *)"\xf0\x9f\x98\x80", 4), "4-byte");
    CHECK(!cdrs_utf8_valid((const uint8_t *)"\xed\xa0\x80", 3), "surrogate");
    CHECK(!cdrs_utf8_valid((const uint8_t *)"\xc0\x80", 2), "overlong");
    CHECK(!cdrs_utf8_valid((const uint8_t *)"\xe2\x82", 2), "truncated");
}

int main(void) {
    hash_and_rng_match_the_spec();
    config_is_checked();
    exact_draws_and_tie_breaks();
    down_and_draining_targets_get_nothing_while_a_healthy_one_exists();
    split_follows_capacity_and_inflight();
    sticky_keys_keep_their_target_and_only_a_lost_targets_keys_move();
    sticky_header_is_the_first_header_with_that_key();
    batch_view_reads_the_layout();
    text_helpers();
    return t_finish("example-router-c");
}
