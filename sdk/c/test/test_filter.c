/*
 * Native tests of plugins/example-filter-c/filter.c (sdk/example-policy.md),
 * with gcc and the generated bindings: run by sdk/c/test/run.sh.
 */
#include "../../../plugins/example-filter-c/filter.c"
#include "test_util.h"

/* Natively the component-type object (a wasm object file) is not linked. */
void __component_type_object_force_link_filter(void) {}

static int init_cfg(const char *cfg, char *err) {
    filter_string_t c, e;
    TW_STRING(c, cfg);
    err[0] = 0;
    if (!exports_filter_init(&c, &e)) {
        memcpy(err, e.ptr, e.len);
        err[e.len] = 0;
        CHECK(cdrs_utf8_valid(e.ptr, e.len), "error text is UTF-8");
        filter_string_free(&e);
        return 0;
    }
    return 1;
}

static int bytes_eq(const filter_option_list_u8_t *o, const char *want) {
    if (!want) return !o->is_some;
    size_t n = strlen(want);
    return o->is_some && o->val.len == n && (n == 0 || memcmp(o->val.ptr, want, n) == 0);
}

static int reason_is(const filter_verdict_t *v, const char *want) {
    return v->tag == CDRS_PLUGIN_TYPES_VERDICT_DEAD_LETTER &&
           v->val.dead_letter.len == strlen(want) &&
           memcmp(v->val.dead_letter.ptr, want, strlen(want)) == 0;
}

static void run(tw_batch *t, filter_list_verdict_t *ret) {
    filter_batch_t b;
    size_t n = t->count;
    TW_BATCH(b, *t);
    exports_filter_filter(&b, ret);
    CHECK(ret->len == n, "one verdict per record: %zu of %zu", ret->len, n);
}

static void first_rule_that_applies_decides(void) {
    char err[256];
    CHECK(init_cfg("{\"require_key\": true, \"max_value_bytes\": 3, \"deny_header\": "
                   "\"x-deny\", \"stamp_header\": \"x-by\"}",
                   err),
          "%s", err);
    tw_batch t = {0};
    tw_hdr deny[] = {{"x-deny", NULL, 0}};
    tw_hdr h[] = {{"h", "v", (size_t)-1}};
    tw_push(&t, 0, 0, 0, NULL, 0, "abcdef", (size_t)-1, 0, NULL);
    tw_push(&t, 1, 0, 0, "k", (size_t)-1, "abcdef", (size_t)-1, 0, NULL);
    tw_push(&t, 2, 0, 0, "k", (size_t)-1, "ab", (size_t)-1, 1, deny);
    tw_push(&t, 3, 0, 0, "k", (size_t)-1, NULL, 0, 1, h);
    filter_list_verdict_t v;
    run(&t, &v);
    CHECK(reason_is(&v.ptr[0], "missing key"), "0");
    CHECK(reason_is(&v.ptr[1], "value is 6 bytes, over max_value_bytes 3"), "1");
    CHECK(v.ptr[2].tag == CDRS_PLUGIN_TYPES_VERDICT_DROP, "2");
    CHECK(v.ptr[3].tag == CDRS_PLUGIN_TYPES_VERDICT_TRANSFORM, "3");
    cdrs_plugin_types_rewrite_t *rw = &v.ptr[3].val.transform;
    CHECK(bytes_eq(&rw->key, "k") && bytes_eq(&rw->value, NULL), "key, no value");
    CHECK(rw->headers.len == 2, "headers %zu", rw->headers.len);
    CHECK(rw->headers.ptr[0].key.len == 1 && rw->headers.ptr[0].key.ptr[0] == 'h' &&
              bytes_eq(&rw->headers.ptr[0].value, "v"),
          "original header");
    CHECK(rw->headers.ptr[1].key.len == 4 && memcmp(rw->headers.ptr[1].key.ptr, "x-by", 4) == 0 &&
              bytes_eq(&rw->headers.ptr[1].value, "example-filter"),
          "stamp header");
    filter_list_verdict_free(&v);
}

static void size_rule_edges(void) {
    char err[256];
    filter_list_verdict_t v;
    tw_batch t = {0};
    CHECK(init_cfg("{\"max_value_bytes\": 0}", err), "%s", err);
    tw_push(&t, 0, 0, 0, NULL, 0, "", 0, 0, NULL);  /* empty: 0 > 0 is false */
    tw_push(&t, 1, 0, 0, NULL, 0, "x", 1, 0, NULL); /* 1 > 0 */
    tw_push(&t, 2, 0, 0, NULL, 0, NULL, 0, 0, NULL); /* no value: no rule */
    run(&t, &v);
    CHECK(v.ptr[0].tag == CDRS_PLUGIN_TYPES_VERDICT_KEEP, "empty value kept");
    CHECK(reason_is(&v.ptr[1], "value is 1 bytes, over max_value_bytes 0"), "1 over 0");
    CHECK(v.ptr[2].tag == CDRS_PLUGIN_TYPES_VERDICT_KEEP, "no value kept");
    filter_list_verdict_free(&v);

    static char big[120];
    memset(big, 'x', sizeof big);
    CHECK(init_cfg("{\"max_value_bytes\": 100}", err), "%s", err);
    tw_push(&t, 0, 0, 0, "k", 1, big, 120, 0, NULL);
    tw_push(&t, 1, 0, 0, "k", 1, big, 100, 0, NULL);
    run(&t, &v);
    CHECK(reason_is(&v.ptr[0], "value is 120 bytes, over max_value_bytes 100"), "the spec's example");
    CHECK(v.ptr[1].tag == CDRS_PLUGIN_TYPES_VERDICT_KEEP, "exactly max: kept");
    filter_list_verdict_free(&v);

    CHECK(init_cfg("{\"max_value_bytes\": 18446744073709551615}", err), "u64 max: %s", err);
    CHECK(init_cfg("{\"max_value_bytes\": null, \"require_key\": false}", err), "%s", err);
    tw_push(&t, 0, 0, 0, NULL, 0, big, 120, 0, NULL);
    run(&t, &v);
    CHECK(v.ptr[0].tag == CDRS_PLUGIN_TYPES_VERDICT_KEEP, "null max: no limit");
    filter_list_verdict_free(&v);
}

static void deny_and_stamp(void) {
    char err[256];
    filter_list_verdict_t v;
    tw_batch t = {0};
    CHECK(init_cfg("{\"deny_header\": \"x-deny\", \"stamp_header\": \"x-by\"}", err), "%s", err);
    tw_hdr case_[] = {{"X-Deny", "1", (size_t)-1}};
    tw_hdr val[] = {{"a", "1", (size_t)-1}, {"x-deny", "", 0}};
    tw_hdr keep[] = {{"n", NULL, 0}, {"\xff", "raw", (size_t)-1}, {"e", "", 0}};
    tw_push(&t, 0, 0, 0, "k", 1, "v", 1, 1, case_); /* case-sensitive: not denied */
    tw_push(&t, 1, 0, 0, "k", 1, "v", 1, 2, val);   /* denied: any value */
    tw_push(&t, 2, 1, 5, "", 0, "", 0, 3, keep);    /* empty key/value stay present */
    tw_push(&t, 3, 0, 0, NULL, 0, NULL, 0, 0, NULL);
    run(&t, &v);
    CHECK(v.ptr[0].tag == CDRS_PLUGIN_TYPES_VERDICT_TRANSFORM, "X-Deny is another key");
    CHECK(v.ptr[1].tag == CDRS_PLUGIN_TYPES_VERDICT_DROP, "denied");
    cdrs_plugin_types_rewrite_t *rw = &v.ptr[2].val.transform;
    CHECK(v.ptr[2].tag == CDRS_PLUGIN_TYPES_VERDICT_TRANSFORM && bytes_eq(&rw->key, "") &&
              bytes_eq(&rw->value, ""),
          "empty key and value are present");
    CHECK(rw->headers.len == 4, "3 + stamp");
    CHECK(rw->headers.ptr[0].key.len == 1 && !rw->headers.ptr[0].value.is_some, "null header kept");
    CHECK(rw->headers.ptr[1].key.len == 0 && bytes_eq(&rw->headers.ptr[1].value, "raw"),
          "non-UTF-8 key reads as \"\"");
    CHECK(bytes_eq(&rw->headers.ptr[2].value, ""), "empty header value kept");
    rw = &v.ptr[3].val.transform;
    CHECK(!rw->key.is_some && !rw->value.is_some && rw->headers.len == 1, "absent stay absent");
    filter_list_verdict_free(&v);

    CHECK(init_cfg("{\"deny_header\": \"x-deny\"}", err), "%s", err);
    tw_hdr dn[] = {{"x-deny", NULL, 0}};
    tw_push(&t, 0, 0, 0, "k", 1, "v", 1, 1, dn);
    tw_push(&t, 1, 0, 0, "k", 1, "v", 1, 0, NULL);
    run(&t, &v);
    CHECK(v.ptr[0].tag == CDRS_PLUGIN_TYPES_VERDICT_DROP, "null header denies too");
    CHECK(v.ptr[1].tag == CDRS_PLUGIN_TYPES_VERDICT_KEEP, "keep");
    filter_list_verdict_free(&v);

    /* an empty batch: an empty list */
    run(&t, &v);
    CHECK(v.len == 0, "empty batch");
    filter_list_verdict_free(&v);
}

static void config_is_checked(void) {
    char err[256];
    CHECK(init_cfg("", err), "empty config: %s", err);
    tw_batch t = {0};
    tw_push(&t, 0, 0, 0, NULL, 0, NULL, 0, 0, NULL);
    filter_list_verdict_t v;
    run(&t, &v);
    CHECK(v.ptr[0].tag == CDRS_PLUGIN_TYPES_VERDICT_KEEP, "keeps everything");
    filter_list_verdict_free(&v);
    static const char *bad[] = {
        "{\"require_key\": 1}", "{\"require_key\": null}", "{\"max_value_bytes\": -1}",
        "{\"max_value_bytes\": -0}", "{\"max_value_bytes\": 1.5}", "{\"max_value_bytes\": 1e2}",
        "{\"max_value_bytes\": \"10\"}", "{\"max_value_bytes\": true}",
        "{\"max_value_bytes\": 18446744073709551616}", "{\"deny_header\": false}",
        "{\"stamp_header\": 1}", "{\"stamp_header\": []}", "{\"x\": 1}", "[]", "{} {}",
        "{\"deny_header\": \"a\", \"deny_header\": \"b\"}",
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        CHECK(!init_cfg(bad[i], err), "accepted bad config %s", bad[i]);
        CHECK(strncmp(err, "invalid config: ", 16) == 0, "message for %s: %s", bad[i], err);
    }
    init_cfg("{\"x\": 1}", err);
    CHECK(strstr(err, "unknown key \"x\"") != NULL, "%s", err);
    init_cfg("{\"max_value_bytes\": 1.5}", err);
    CHECK(strstr(err, "\"max_value_bytes\"") != NULL, "%s", err);
    /* a failed init keeps nothing of the bad config; a good one replaces all */
    CHECK(init_cfg("{\"require_key\": true}", err), "%s", err);
    CHECK(F.require_key && !F.has_max && !F.deny_header.set && !F.stamp_header.set, "state");
}

/* cdrs_json_lookup against the cases of the Rust SDK's json::lookup. */
static int lookup(const char *doc, const char *a, const char *b, char *got) {
    const char *path[2] = {a, b};
    cdrs_json_span v;
    int rc = cdrs_json_lookup((const uint8_t *)doc, strlen(doc), path, b ? 2 : (a ? 1 : 0), &v);
    got[0] = 0;
    if (rc > 0) {
        memcpy(got, doc + v.start, v.len);
        got[v.len] = 0;
    }
    return rc;
}

static void json_fields_are_found_and_bad_json_refused(void) {
    char got[256];
    const char *doc = "{\"trade\":{\"side\":\"buy\",\"qty\":5},\"type\":\"fill\"}";
    CHECK(lookup(doc, "trade", "side", got) == 1 && strcmp(got, "\"buy\"") == 0, "%s", got);
    CHECK(lookup(doc, "trade", NULL, got) == 1 && strcmp(got, "{\"side\":\"buy\",\"qty\":5}") == 0, "%s", got);
    CHECK(lookup(doc, "nope", NULL, got) == 0, "missing key");
    CHECK(lookup(doc, "type", "x", got) == 0, "a step that is not an object");
    CHECK(lookup(doc, NULL, NULL, got) == 1 && strcmp(got, doc) == 0, "empty path: the document");
    CHECK(lookup(" { \"a\" : [1, {\"b\": [true, false, null]}, -0.5e+3, \"\\u00e9\\n\"] } ", "a", NULL, got) == 1 &&
              strcmp(got, "[1, {\"b\": [true, false, null]}, -0.5e+3, \"\\u00e9\\n\"]") == 0,
          "%s", got);
    CHECK(lookup("{\"a\":{\"b\":1},\"a\":2}", "a", "b", got) == 0, "the last equal key wins");
    CHECK(lookup("{\"a\":{\"b\":1},\"a\":{\"b\":3}}", "a", "b", got) == 1 && strcmp(got, "3") == 0, "%s", got);
    const char *bad[] = {"{not json", "{\"a\":1,}", "{\"a\":1} x", "[1,2", "{\"a\":01}", "{\"a\":\"\x01\"}",
                         "{\"a\":\"\\x\"}", "{\"a\":tru}", "{\"a\" 1}", "{\"x\":[}]}", "", "{\"a\":1.}", "{\"a\":-}"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        CHECK(lookup(bad[i], "a", NULL, got) < 0, "not JSON: %s", bad[i]);
    /* bad JSON after the value found is still an error */
    CHECK(lookup("{\"a\":1,\"b\":[}", "a", NULL, got) < 0, "checked to the end");
    char deep[3000];
    size_t n = 0;
    for (int i = 0; i < 1100; i++) deep[n++] = '[';
    for (int i = 0; i < 1100; i++) deep[n++] = ']';
    deep[n] = 0;
    CHECK(lookup(deep, NULL, NULL, got) < 0, "nesting over CDRS_JSON_MAX_DEPTH is refused");
    const uint8_t plain[] = "\"buy\"", esc[] = "\"b\\u0075y\"", num[] = "5";
    CHECK(cdrs_json_string_is(plain, 5, "buy"), "plain string");
    CHECK(cdrs_json_string_is(esc, sizeof esc - 1, "buy"), "escaped string");
    CHECK(!cdrs_json_string_is(plain, 5, "bu"), "other string");
    CHECK(!cdrs_json_string_is(num, 1, "5"), "a number is not a string");
}

int main(void) {
    first_rule_that_applies_decides();
    size_rule_edges();
    deny_and_stamp();
    config_is_checked();
    json_fields_are_found_and_bad_json_refused();
    return t_finish("example-filter-c");
}
