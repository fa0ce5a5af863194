/*
 * Helpers for the native (gcc) tests of C plugins: a tiny check framework
 * and a batch writer that mirrors `Tables::push` of sdk/rust/src/layout.rs.
 * The batch is built the way the host lowers it: every list malloc'd, owned
 * by the export that receives it.
 */
#ifndef CDRS_TEST_UTIL_H
#define CDRS_TEST_UTIL_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int t_passed, t_failed;

#define CHECK(cond, ...)                                                       \
    do {                                                                       \
        if (cond) {                                                            \
            t_passed++;                                                        \
        } else {                                                               \
            t_failed++;                                                        \
            fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);    \
            fprintf(stderr, __VA_ARGS__);                                      \
            fprintf(stderr, "\n");                                             \
        }                                                                      \
    } while (0)

static int t_finish(const char *name) {
    printf("%s: %d passed, %d failed\n", name, t_passed, t_failed);
    return t_failed ? 1 : 0;
}

/* A header to write: key (NUL-terminated), value (NULL: null header). */
typedef struct tw_hdr {
    const char *key;
    const char *value;
    size_t value_len; /* used when value != NULL; (size_t)-1: strlen */
} tw_hdr;

typedef struct tw_buf {
    uint8_t *ptr;
    size_t len, cap;
} tw_buf;

typedef struct tw_batch {
    tw_buf records, headers, data;
    uint32_t count;
} tw_batch;

static void tw_put(tw_buf *b, const void *p, size_t n) {
    if (b->len + n > b->cap) {
        b->cap = (b->len + n) * 2 + 16;
        b->ptr = realloc(b->ptr, b->cap);
        if (!b->ptr) abort();
    }
    if (n) memcpy(b->ptr + b->len, p, n);
    b->len += n;
}

static void tw_u32(tw_buf *b, uint32_t v) {
    uint8_t le[4] = {(uint8_t)v, (uint8_t)(v >> 8), (uint8_t)(v >> 16), (uint8_t)(v >> 24)};
    tw_put(b, le, 4);
}

static void tw_i64(tw_buf *b, int64_t v) {
    tw_u32(b, (uint32_t)(uint64_t)v);
    tw_u32(b, (uint32_t)((uint64_t)v >> 32));
}

/* Appends bytes to data: (start, len), len 0xffffffff for absent. */
static void tw_append(tw_batch *t, const void *p, size_t n, uint32_t *start, uint32_t *len) {
    *start = (uint32_t)t->data.len;
    if (!p) {
        *len = 0xffffffffu;
        return;
    }
    tw_put(&t->data, p, n);
    *len = (uint32_t)n;
}

/* Appends a record. key/value NULL: absent; lengths (size_t)-1: strlen. */
static void tw_push(tw_batch *t, int64_t offset, int has_ts, int64_t ts, const char *key,
                    size_t key_len, const char *value, size_t value_len, size_t nh,
                    const tw_hdr *hs) {
    uint32_t first = (uint32_t)(t->headers.len / 16);
    for (size_t i = 0; i < nh; i++) {
        uint32_t ks, kl, vs, vl;
        tw_append(t, hs[i].key, strlen(hs[i].key), &ks, &kl);
        size_t hv = hs[i].value_len == (size_t)-1 && hs[i].value ? strlen(hs[i].value)
                                                                  : hs[i].value_len;
        tw_append(t, hs[i].value, hv, &vs, &vl);
        tw_u32(&t->headers, ks);
        tw_u32(&t->headers, kl);
        tw_u32(&t->headers, vs);
        tw_u32(&t->headers, vl);
    }
    uint32_t ks, kl, vs, vl;
    if (key && key_len == (size_t)-1) key_len = strlen(key);
    if (value && value_len == (size_t)-1) value_len = strlen(value);
    tw_append(t, key, key_len, &ks, &kl);
    tw_append(t, value, value_len, &vs, &vl);
    tw_i64(&t->records, offset);
    tw_i64(&t->records, has_ts ? ts : INT64_MIN);
    tw_u32(&t->records, ks);
    tw_u32(&t->records, kl);
    tw_u32(&t->records, vs);
    tw_u32(&t->records, vl);
    tw_u32(&t->records, first);
    tw_u32(&t->records, (uint32_t)nh);
    t->count++;
}

/* Moves a buffer into a (ptr, len) pair the way the host lowers a list: an
 * empty list has no allocation. */
#define TW_MOVE(dst, buf)                                                      \
    do {                                                                       \
        if ((buf).len == 0) {                                                  \
            free((buf).ptr);                                                   \
            (dst).ptr = NULL;                                                  \
        } else {                                                               \
            (dst).ptr = (buf).ptr;                                             \
        }                                                                      \
        (dst).len = (buf).len;                                                 \
        (buf).ptr = NULL;                                                      \
        (buf).len = (buf).cap = 0;                                             \
    } while (0)

/* A malloc'd copy of `s` as a wit-bindgen string (ptr, len). */
#define TW_STRING(dst, s)                                                      \
    do {                                                                       \
        size_t n_ = strlen(s);                                                 \
        (dst).ptr = n_ ? malloc(n_) : NULL;                                    \
        if (n_) memcpy((dst).ptr, (s), n_);                                    \
        (dst).len = n_;                                                        \
    } while (0)

/* The wit-bindgen batch (`router_batch_t` / `filter_batch_t`) from `t`;
 * `t` is left empty. */
#define TW_BATCH(dst, t)                                                       \
    do {                                                                       \
        TW_STRING((dst).topic, "t");                                           \
        (dst).partition = 0;                                                   \
        (dst).count = (t).count;                                               \
        TW_MOVE((dst).records, (t).records);                                   \
        TW_MOVE((dst).headers, (t).headers);                                   \
        TW_MOVE((dst).data, (t).data);                                         \
        (t).count = 0;                                                         \
    } while (0)

/* Host imports the generated bindings reference (unused by the examples). */
void __wasm_import_cdrs_plugin_host_log(int32_t level, uint8_t *ptr, size_t len) {
    (void)level;
    fprintf(stderr, "[plugin log] %.*s\n", (int)len, (const char *)ptr);
}
int64_t __wasm_import_cdrs_plugin_host_now_ms(void) { return 0; }

#endif
