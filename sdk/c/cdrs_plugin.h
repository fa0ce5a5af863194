/*
 * cdrs_plugin.h: typed views over a CDRS plugin batch, and a strict reader
 * for flat JSON config objects. Header-only (`static inline`), C99, no libc
 * beyond <stdint.h>/<stddef.h>/<stdbool.h>/<string.h>, no WASI calls: it
 * compiles the same for wasm32-wasi (Zig) and natively (for unit tests).
 *
 * The batch layout is the one documented on `batch` in sdk/wit/plugin.wit
 * (the C mirror of sdk/rust/src/layout.rs; names follow its API):
 *
 *   records: 40 bytes per record, little-endian
 *     0 s64 offset | 8 s64 timestamp (INT64_MIN: none)
 *    16 u32 key start | 20 u32 key length (0xffffffff: no key)
 *    24 u32 value start | 28 u32 value length (0xffffffff: no value)
 *    32 u32 first header index | 36 u32 header count
 *   headers: 16 bytes per header
 *     0 u32 key start | 4 u32 key length | 8 u32 value start
 *    12 u32 value length (0xffffffff: null header)
 *   data: every key, value, header key and header value.
 *
 * As in the Rust SDK, a range outside `data` reads as empty (the host never
 * writes one), a header range outside `headers` reads as no headers, and a
 * header key that is not UTF-8 reads as "".
 *
 *   cdrs_batch b = CDRS_BATCH(batch);        // from wit-bindgen's batch type
 *   for (size_t i = 0; i < cdrs_batch_len(&b); i++) {
 *       cdrs_record r;
 *       cdrs_batch_record(&b, i, &r);
 *       if (r.has_key) { ... r.key, r.key_len ... }
 *       const uint8_t *v; uint32_t vlen;
 *       if (cdrs_record_header(&b, &r, "x-client", &v, &vlen) == CDRS_HEADER_VALUE) { ... }
 *   }
 */
#ifndef CDRS_PLUGIN_H
#define CDRS_PLUGIN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------------ */
/* Batch layout                                                              */
/* ------------------------------------------------------------------------ */

/** Bytes per entry of the record table. */
#define CDRS_RECORD_BYTES 40u
/** Bytes per entry of the header table. */
#define CDRS_HEADER_BYTES 16u
/** Length that marks an absent key or value, or a null header value. */
#define CDRS_ABSENT 0xffffffffu
/** Timestamp that marks a record without one. */
#define CDRS_NO_TIMESTAMP INT64_MIN

/** A batch read in place: the three byte tables of a `batch`. */
typedef struct cdrs_batch {
    const uint8_t *records;
    size_t records_len;
    const uint8_t *headers;
    size_t headers_len;
    const uint8_t *data;
    size_t data_len;
} cdrs_batch;

/** A view of wit-bindgen's batch struct (`router_batch_t *`, `filter_batch_t *`). */
#define CDRS_BATCH(b)                                                          \
    cdrs_batch_new((b)->records.ptr, (b)->records.len, (b)->headers.ptr,       \
                   (b)->headers.len, (b)->data.ptr, (b)->data.len)

/** One record. Pointers borrow from the batch's `data`. */
typedef struct cdrs_record {
    /** Kafka offset of the record in its partition. */
    int64_t offset;
    bool has_timestamp;
    /** ms since the Unix epoch; 0 when `!has_timestamp`. */
    int64_t timestamp_ms;
    /** Key: `has_key` false when the record has none (an empty key is a key). */
    bool has_key;
    const uint8_t *key;
    uint32_t key_len;
    /** Payload (routers: only with `needs-value`). */
    bool has_value;
    const uint8_t *value;
    uint32_t value_len;
    /** The record's headers: entries `header_first .. header_first +
     *  header_count` of the header table (0 headers if out of range). */
    uint32_t header_first;
    uint32_t header_count;
} cdrs_record;

/** One header. `key` is UTF-8 (not NUL-terminated); `has_value` false for a
 *  null header. */
typedef struct cdrs_header {
    const uint8_t *key;
    uint32_t key_len;
    bool has_value;
    const uint8_t *value;
    uint32_t value_len;
} cdrs_header;

/** What `cdrs_record_header` found. */
typedef enum cdrs_header_status {
    /** No header with that key. */
    CDRS_HEADER_ABSENT = 0,
    /** The first header with that key has a null value. */
    CDRS_HEADER_NULL = 1,
    /** The first header with that key has a value (possibly empty). */
    CDRS_HEADER_VALUE = 2
} cdrs_header_status;

static inline uint32_t cdrs_u32_le(const uint8_t *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) |
           ((uint32_t)p[3] << 24);
}

static inline int64_t cdrs_i64_le(const uint8_t *p) {
    uint64_t lo = cdrs_u32_le(p), hi = cdrs_u32_le(p + 4);
    return (int64_t)(lo | (hi << 32));
}

static inline cdrs_batch cdrs_batch_new(const uint8_t *records, size_t records_len,
                                        const uint8_t *headers, size_t headers_len,
                                        const uint8_t *data, size_t data_len) {
    cdrs_batch b;
    b.records = records;
    b.records_len = records_len;
    b.headers = headers;
    b.headers_len = headers_len;
    b.data = data;
    b.data_len = data_len;
    return b;
}

/** Number of records (whole 40-byte entries of the record table). */
static inline size_t cdrs_batch_len(const cdrs_batch *b) {
    return b->records_len / CDRS_RECORD_BYTES;
}

/* Bytes `start .. start + len` of `data`: false for CDRS_ABSENT; empty if out
 * of range. */
static inline bool cdrs__bytes(const cdrs_batch *b, uint32_t start, uint32_t len,
                               const uint8_t **ptr, uint32_t *out_len) {
    static const uint8_t empty[1] = {0};
    if (len == CDRS_ABSENT) {
        *ptr = empty;
        *out_len = 0;
        return false;
    }
    if ((size_t)start <= b->data_len && (size_t)len <= b->data_len - (size_t)start) {
        *ptr = b->data + start;
        *out_len = len;
    } else {
        *ptr = empty;
        *out_len = 0;
    }
    return true;
}

/** Reads record `i` (0-based) into `*rec`; false if there is none. */
static inline bool cdrs_batch_record(const cdrs_batch *b, size_t i, cdrs_record *rec) {
    if (i >= cdrs_batch_len(b)) return false;
    const uint8_t *e = b->records + i * CDRS_RECORD_BYTES;
    int64_t ts = cdrs_i64_le(e + 8);
    rec->offset = cdrs_i64_le(e);
    rec->has_timestamp = ts != CDRS_NO_TIMESTAMP;
    rec->timestamp_ms = rec->has_timestamp ? ts : 0;
    rec->has_key = cdrs__bytes(b, cdrs_u32_le(e + 16), cdrs_u32_le(e + 20), &rec->key,
                               &rec->key_len);
    rec->has_value = cdrs__bytes(b, cdrs_u32_le(e + 24), cdrs_u32_le(e + 28),
                                 &rec->value, &rec->value_len);
    uint32_t first = cdrs_u32_le(e + 32), n = cdrs_u32_le(e + 36);
    size_t table = b->headers_len / CDRS_HEADER_BYTES;
    if ((size_t)first <= table && (size_t)n <= table - (size_t)first) {
        rec->header_first = first;
        rec->header_count = n;
    } else {
        rec->header_first = 0;
        rec->header_count = 0;
    }
    return true;
}

/** True if `s[0..len]` is well-formed UTF-8. */
static inline bool cdrs_utf8_valid(const uint8_t *s, size_t len) {
    size_t i = 0;
    while (i < len) {
        uint8_t c = s[i];
        size_t n;
        uint32_t cp;
        if (c < 0x80) {
            i++;
            continue;
        } else if (c >= 0xc2 && c <= 0xdf) {
            n = 1;
            cp = c & 0x1f;
        } else if (c >= 0xe0 && c <= 0xef) {
            n = 2;
            cp = c & 0x0f;
        } else if (c >= 0xf0 && c <= 0xf4) {
            n = 3;
            cp = c & 0x07;
        } else {
            return false;
        }
        if (len - i <= n) return false;
        for (size_t k = 1; k <= n; k++) {
            if ((s[i + k] & 0xc0) != 0x80) return false;
            cp = (cp << 6) | (s[i + k] & 0x3f);
        }
        if ((n == 2 && cp < 0x800) || (n == 3 && (cp < 0x10000 || cp > 0x10ffff)) ||
            (cp >= 0xd800 && cp <= 0xdfff))
            return false;
        i += n + 1;
    }
    return true;
}

/** Reads header `j` (0-based, `j < rec->header_count`) of `rec` into `*h`;
 *  false if there is none. A key that is not UTF-8 reads as "". */
static inline bool cdrs_record_header_at(const cdrs_batch *b, const cdrs_record *rec,
                                         uint32_t j, cdrs_header *h) {
    if (j >= rec->header_count) return false;
    const uint8_t *e = b->headers + ((size_t)rec->header_first + j) * CDRS_HEADER_BYTES;
    if (!cdrs__bytes(b, cdrs_u32_le(e), cdrs_u32_le(e + 4), &h->key, &h->key_len) ||
        !cdrs_utf8_valid(h->key, h->key_len)) {
        h->key_len = 0;
    }
    h->has_value = cdrs__bytes(b, cdrs_u32_le(e + 8), cdrs_u32_le(e + 12), &h->value,
                               &h->value_len);
    return true;
}

/** The first header of `rec` whose key is exactly `name[0..name_len]`:
 *  CDRS_HEADER_VALUE with `*value`/`*value_len` set, CDRS_HEADER_NULL, or
 *  CDRS_HEADER_ABSENT. `value`/`value_len` may be NULL. */
static inline cdrs_header_status cdrs_record_header_n(const cdrs_batch *b,
                                                      const cdrs_record *rec,
                                                      const char *name, size_t name_len,
                                                      const uint8_t **value,
                                                      uint32_t *value_len) {
    for (uint32_t j = 0; j < rec->header_count; j++) {
        const uint8_t *e =
            b->headers + ((size_t)rec->header_first + j) * CDRS_HEADER_BYTES;
        const uint8_t *k;
        uint32_t klen;
        bool match;
        if (!cdrs__bytes(b, cdrs_u32_le(e), cdrs_u32_le(e + 4), &k, &klen)) klen = 0;
        if (name_len == 0) {
            /* "" also matches a key that is not UTF-8 (it reads as ""). */
            match = klen == 0 || !cdrs_utf8_valid(k, klen);
        } else {
            /* (a raw match with a key that is not UTF-8 is no match: the
             * key reads as "") */
            match = klen == name_len && memcmp(k, name, name_len) == 0 &&
                    cdrs_utf8_valid(k, klen);
        }
        if (!match) continue;
        const uint8_t *v;
        uint32_t vlen;
        if (!cdrs__bytes(b, cdrs_u32_le(e + 8), cdrs_u32_le(e + 12), &v, &vlen))
            return CDRS_HEADER_NULL;
        if (value) *value = v;
        if (value_len) *value_len = vlen;
        return CDRS_HEADER_VALUE;
    }
    return CDRS_HEADER_ABSENT;
}

/** `cdrs_record_header_n` with a NUL-terminated `name`. */
static inline cdrs_header_status cdrs_record_header(const cdrs_batch *b,
                                                    const cdrs_record *rec,
                                                    const char *name,
                                                    const uint8_t **value,
                                                    uint32_t *value_len) {
    return cdrs_record_header_n(b, rec, name, strlen(name), value, value_len);
}

/* ------------------------------------------------------------------------ */
/* Small text helpers (no printf: it would pull kilobytes into the module)  */
/* ------------------------------------------------------------------------ */

/** Writes `v` in decimal to `buf` (room for 21 bytes), NUL-terminated;
 *  returns the number of digits. */
static inline size_t cdrs_fmt_u64(char *buf, uint64_t v) {
    char tmp[20];
    size_t n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    for (size_t i = 0; i < n; i++) buf[i] = tmp[n - 1 - i];
    buf[n] = 0;
    return n;
}

/** A fixed-size text buffer that truncates on a UTF-8 character boundary
 *  (messages end up in WIT strings, which must be valid UTF-8). */
typedef struct cdrs_text {
    char *buf;
    size_t cap; /* bytes, including the terminating NUL */
    size_t len;
} cdrs_text;

static inline void cdrs_text_append_n(cdrs_text *t, const char *s, size_t n) {
    if (t->cap == 0) return;
    size_t room = t->cap - 1 - t->len;
    if (n > room) {
        n = room;
        /* do not cut a character: back off over continuation bytes */
        while (n > 0 && ((uint8_t)s[n] & 0xc0) == 0x80) n--;
    }
    memcpy(t->buf + t->len, s, n);
    t->len += n;
    t->buf[t->len] = 0;
}

static inline void cdrs_text_append(cdrs_text *t, const char *s) {
    cdrs_text_append_n(t, s, strlen(s));
}

static inline void cdrs_text_append_u64(cdrs_text *t, uint64_t v) {
    char d[21];
    cdrs_text_append_n(t, d, cdrs_fmt_u64(d, v));
}

/* ------------------------------------------------------------------------ */
/* Strict flat JSON config reader                                            */
/* ------------------------------------------------------------------------ */
/*
 * Reads a config of the form {"key": value, ...} where each value is a
 * string, true/false, an integer (no fraction, no exponent) or null. Anything
 * else (nested objects or arrays, non-integer numbers, a document that is not
 * one object, duplicate keys, invalid JSON) is an error with a clear message.
 * An empty config (only whitespace) reads as {}.
 *
 * Strings are decoded in place: the reader writes into `text`, so pass a
 * buffer you own (wit-bindgen's `config` argument is one); decoded keys and
 * strings are NUL-terminated and stay valid as long as `text`. A decoded
 * string may contain NUL (from \u0000): use the lengths.
 *
 *   cdrs_json_reader r;
 *   cdrs_json_member m;
 *   int rc;
 *   cdrs_json_begin(&r, (char *)config->ptr, config->len);
 *   while ((rc = cdrs_json_next(&r, &m)) > 0) {
 *       if (cdrs_json_key_is(&m, "sticky")) {
 *           if (m.kind != CDRS_JSON_BOOL) { cdrs_json_type_error(&r, &m, "a boolean"); break; }
 *           sticky = m.boolean;
 *       } else { cdrs_json_unknown_key(&r, &m); break; }
 *   }
 *   if (r.failed) ... r.error ...      // rc < 0, or set by a helper above
 */

typedef enum cdrs_json_kind {
    CDRS_JSON_NULL = 1,
    CDRS_JSON_BOOL = 2,
    /** An integer: `negative` and `magnitude` (|value|, fits u64). */
    CDRS_JSON_INT = 3,
    CDRS_JSON_STRING = 4
} cdrs_json_kind;

typedef struct cdrs_json_member {
    const char *key;
    size_t key_len;
    cdrs_json_kind kind;
    bool boolean;
    bool negative;
    uint64_t magnitude;
    const char *string;
    size_t string_len;
} cdrs_json_member;

#define CDRS_JSON_MAX_KEYS 32
#define CDRS_JSON_ERROR_BYTES 200

typedef struct cdrs_json_reader {
    char *p;
    char *end;
    char *start;
    int state; /* 0: before '{', 1: in object, 2: done */
    bool failed;
    size_t nkeys;
    const char *keys[CDRS_JSON_MAX_KEYS];
    size_t key_lens[CDRS_JSON_MAX_KEYS];
    /** The error message (valid UTF-8, NUL-terminated) once `failed`. */
    char error[CDRS_JSON_ERROR_BYTES];
} cdrs_json_reader;

static inline void cdrs_json_begin(cdrs_json_reader *r, char *text, size_t len) {
    r->p = text;
    r->start = text;
    r->end = text + len;
    r->state = 0;
    r->failed = false;
    r->nkeys = 0;
    r->error[0] = 0;
}

static inline bool cdrs_json_key_is(const cdrs_json_member *m, const char *name) {
    size_t n = strlen(name);
    return m->key_len == n && memcmp(m->key, name, n) == 0;
}

/* Starts an error message "config: " into r->error; returns the text buffer. */
static inline cdrs_text cdrs__json_msg(cdrs_json_reader *r) {
    cdrs_text t;
    t.buf = r->error;
    t.cap = sizeof r->error;
    t.len = 0;
    r->error[0] = 0;
    r->failed = true;
    r->state = 2;
    cdrs_text_append(&t, "invalid config: ");
    return t;
}

static inline int cdrs__json_fail_at(cdrs_json_reader *r, const char *what) {
    size_t at = (size_t)(r->p - r->start);
    cdrs_text t = cdrs__json_msg(r);
    cdrs_text_append(&t, what);
    cdrs_text_append(&t, " at byte ");
    cdrs_text_append_u64(&t, at);
    return -1;
}

static inline void cdrs__json_append_key(cdrs_text *t, const cdrs_json_member *m) {
    cdrs_text_append(t, "key \"");
    cdrs_text_append_n(t, m->key, m->key_len > 60 ? 60 : m->key_len);
    if (m->key_len > 60) cdrs_text_append(t, "...");
    cdrs_text_append(t, "\"");
}

static inline const char *cdrs_json_kind_name(const cdrs_json_member *m) {
    switch (m->kind) {
    case CDRS_JSON_NULL: return "null";
    case CDRS_JSON_BOOL: return "a boolean";
    case CDRS_JSON_INT: return "an integer";
    default: return "a string";
    }
}

/** Fails the reader with `invalid config: key "K" must be EXPECTED, not
 *  KIND`; returns -1. */
static inline int cdrs_json_type_error(cdrs_json_reader *r, const cdrs_json_member *m,
                                       const char *expected) {
    cdrs_text t = cdrs__json_msg(r);
    cdrs__json_append_key(&t, m);
    cdrs_text_append(&t, " must be ");
    cdrs_text_append(&t, expected);
    cdrs_text_append(&t, ", not ");
    cdrs_text_append(&t, cdrs_json_kind_name(m));
    return -1;
}

/** Fails the reader with `invalid config: unknown key "K" (expected ...)`;
 *  returns -1. `known` (may be NULL) lists the accepted keys. */
static inline int cdrs_json_unknown_key(cdrs_json_reader *r, const cdrs_json_member *m,
                                        const char *known) {
    cdrs_text t = cdrs__json_msg(r);
    cdrs_text_append(&t, "unknown ");
    cdrs__json_append_key(&t, m);
    if (known) {
        cdrs_text_append(&t, " (expected one of: ");
        cdrs_text_append(&t, known);
        cdrs_text_append(&t, ")");
    }
    return -1;
}

/** Fails the reader with `invalid config: key "K" MESSAGE`; returns -1. */
static inline int cdrs_json_key_error(cdrs_json_reader *r, const cdrs_json_member *m,
                                      const char *message) {
    cdrs_text t = cdrs__json_msg(r);
    cdrs__json_append_key(&t, m);
    cdrs_text_append(&t, " ");
    cdrs_text_append(&t, message);
    return -1;
}

/** Reads an integer member as u64 in `min..=max`; on a wrong type or a value
 *  out of range fails the reader and returns -1. */
static inline int cdrs_json_u64_in(cdrs_json_reader *r, const cdrs_json_member *m,
                                   uint64_t min, uint64_t max, uint64_t *out) {
    if (m->kind != CDRS_JSON_INT) return cdrs_json_type_error(r, m, "an integer");
    /* any negative number is out of range, -0 included (JSON parsers read
     * it as a float) */
    if (m->negative || m->magnitude < min || m->magnitude > max) {
        cdrs_text t = cdrs__json_msg(r);
        cdrs__json_append_key(&t, m);
        cdrs_text_append(&t, " must be an integer in ");
        cdrs_text_append_u64(&t, min);
        cdrs_text_append(&t, "..=");
        cdrs_text_append_u64(&t, max);
        return -1;
    }
    *out = m->magnitude;
    return 0;
}

/* True if `s[0..len]` is only Unicode White_Space (what Rust's `str::trim`
 * removes): such a config counts as empty, as in the other SDKs. */
static inline bool cdrs__only_space(const char *s, size_t len) {
    const uint8_t *p = (const uint8_t *)s;
    size_t i = 0;
    while (i < len) {
        uint32_t cp;
        size_t n;
        if (p[i] < 0x80) { cp = p[i]; n = 1; }
        else if ((p[i] & 0xe0) == 0xc0 && len - i >= 2) {
            cp = ((uint32_t)(p[i] & 0x1f) << 6) | (p[i + 1] & 0x3f); n = 2;
        } else if ((p[i] & 0xf0) == 0xe0 && len - i >= 3) {
            cp = ((uint32_t)(p[i] & 0x0f) << 12) | ((uint32_t)(p[i + 1] & 0x3f) << 6) |
                 (p[i + 2] & 0x3f);
            n = 3;
        } else return false;
        if (!((cp >= 0x09 && cp <= 0x0d) || cp == 0x20 || cp == 0x85 || cp == 0xa0 ||
              cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200a) || cp == 0x2028 ||
              cp == 0x2029 || cp == 0x202f || cp == 0x205f || cp == 0x3000))
            return false;
        i += n;
    }
    return true;
}

static inline void cdrs__json_ws(cdrs_json_reader *r) {
    while (r->p < r->end &&
           (*r->p == ' ' || *r->p == '\t' || *r->p == '\n' || *r->p == '\r'))
        r->p++;
}

static inline int cdrs__json_hex4(cdrs_json_reader *r, uint32_t *out) {
    uint32_t v = 0;
    if (r->end - r->p < 4) return cdrs__json_fail_at(r, "truncated \\u escape");
    for (int i = 0; i < 4; i++) {
        char c = *r->p++;
        v <<= 4;
        if (c >= '0' && c <= '9') v |= (uint32_t)(c - '0');
        else if (c >= 'a' && c <= 'f') v |= (uint32_t)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F') v |= (uint32_t)(c - 'A' + 10);
        else return cdrs__json_fail_at(r, "invalid \\u escape");
    }
    *out = v;
    return 0;
}

/* Reads a string at r->p (which is at '"'), decoding it in place. */
static inline int cdrs__json_string(cdrs_json_reader *r, const char **out, size_t *out_len) {
    char *w = ++r->p; /* decoded bytes never outrun the bytes read */
    char *begin = w;
    for (;;) {
        if (r->p >= r->end) return cdrs__json_fail_at(r, "unterminated string");
        uint8_t c = (uint8_t)*r->p;
        if (c == '"') {
            r->p++;
            *w = 0; /* w <= position of the closing quote */
            *out = begin;
            *out_len = (size_t)(w - begin);
            return 0;
        }
        if (c < 0x20) return cdrs__json_fail_at(r, "control character in string");
        if (c != '\\') {
            *w++ = (char)c;
            r->p++;
            continue;
        }
        r->p++;
        if (r->p >= r->end) return cdrs__json_fail_at(r, "unterminated string");
        char e = *r->p++;
        switch (e) {
        case '"': *w++ = '"'; break;
        case '\\': *w++ = '\\'; break;
        case '/': *w++ = '/'; break;
        case 'b': *w++ = '\b'; break;
        case 'f': *w++ = '\f'; break;
        case 'n': *w++ = '\n'; break;
        case 'r': *w++ = '\r'; break;
        case 't': *w++ = '\t'; break;
        case 'u': {
            uint32_t cp;
            if (cdrs__json_hex4(r, &cp) < 0) return -1;
            if (cp >= 0xdc00 && cp <= 0xdfff)
                return cdrs__json_fail_at(r, "lone trailing surrogate in \\u escape");
            if (cp >= 0xd800 && cp <= 0xdbff) {
                uint32_t lo;
                if (r->end - r->p < 2 || r->p[0] != '\\' || r->p[1] != 'u')
                    return cdrs__json_fail_at(r, "lone leading surrogate in \\u escape");
                r->p += 2;
                if (cdrs__json_hex4(r, &lo) < 0) return -1;
                if (lo < 0xdc00 || lo > 0xdfff)
                    return cdrs__json_fail_at(r, "lone leading surrogate in \\u escape");
                cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
            }
            if (cp < 0x80) {
                *w++ = (char)cp;
            } else if (cp < 0x800) {
                *w++ = (char)(0xc0 | (cp >> 6));
                *w++ = (char)(0x80 | (cp & 0x3f));
            } else if (cp < 0x10000) {
                *w++ = (char)(0xe0 | (cp >> 12));
                *w++ = (char)(0x80 | ((cp >> 6) & 0x3f));
                *w++ = (char)(0x80 | (cp & 0x3f));
            } else {
                *w++ = (char)(0xf0 | (cp >> 18));
                *w++ = (char)(0x80 | ((cp >> 12) & 0x3f));
                *w++ = (char)(0x80 | ((cp >> 6) & 0x3f));
                *w++ = (char)(0x80 | (cp & 0x3f));
            }
            break;
        }
        default:
            r->p--;
            return cdrs__json_fail_at(r, "invalid escape in string");
        }
    }
}

static inline bool cdrs__json_word(cdrs_json_reader *r, const char *word) {
    size_t n = strlen(word);
    if ((size_t)(r->end - r->p) < n || memcmp(r->p, word, n) != 0) return false;
    r->p += n;
    return true;
}

static inline int cdrs__json_value(cdrs_json_reader *r, cdrs_json_member *m) {
    if (r->p >= r->end) return cdrs__json_fail_at(r, "expected a value");
    char c = *r->p;
    if (c == '"') {
        m->kind = CDRS_JSON_STRING;
        return cdrs__json_string(r, &m->string, &m->string_len);
    }
    if (c == 't' || c == 'f' || c == 'n') {
        if (cdrs__json_word(r, "true")) {
            m->kind = CDRS_JSON_BOOL;
            m->boolean = true;
        } else if (cdrs__json_word(r, "false")) {
            m->kind = CDRS_JSON_BOOL;
            m->boolean = false;
        } else if (cdrs__json_word(r, "null")) {
            m->kind = CDRS_JSON_NULL;
        } else {
            return cdrs__json_fail_at(r, "expected a value");
        }
        return 0;
    }
    if (c == '-' || (c >= '0' && c <= '9')) {
        bool neg = c == '-';
        if (neg) r->p++;
        if (r->p >= r->end || *r->p < '0' || *r->p > '9')
            return cdrs__json_fail_at(r, "invalid number");
        uint64_t v = 0;
        bool overflow = false;
        if (*r->p == '0') {
            r->p++;
        } else {
            while (r->p < r->end && *r->p >= '0' && *r->p <= '9') {
                uint64_t d = (uint64_t)(*r->p - '0');
                if (v > (UINT64_MAX - d) / 10) overflow = true;
                else v = v * 10 + d;
                r->p++;
            }
        }
        if (r->p < r->end && (*r->p == '.' || *r->p == 'e' || *r->p == 'E')) {
            cdrs_text t = cdrs__json_msg(r);
            cdrs__json_append_key(&t, m);
            cdrs_text_append(&t, " must not be a fractional number (integers only)");
            return -1;
        }
        if (r->p < r->end && *r->p >= '0' && *r->p <= '9')
            return cdrs__json_fail_at(r, "invalid number (leading zero)");
        if (overflow) {
            cdrs_text t = cdrs__json_msg(r);
            cdrs__json_append_key(&t, m);
            cdrs_text_append(&t, " is out of range");
            return -1;
        }
        m->kind = CDRS_JSON_INT;
        m->negative = neg;
        m->magnitude = v;
        return 0;
    }
    if (c == '{' || c == '[') {
        cdrs_text t = cdrs__json_msg(r);
        cdrs__json_append_key(&t, m);
        cdrs_text_append(&t, c == '{' ? " must not be an object" : " must not be an array");
        cdrs_text_append(&t, " (the config is a flat object of strings, booleans, "
                             "integers and nulls)");
        return -1;
    }
    return cdrs__json_fail_at(r, "expected a value");
}

/** Reads the next member into `*m`: 1 if there is one, 0 at the end of a
 *  valid document, -1 on an error (`r->failed`, message in `r->error`). */
static inline int cdrs_json_next(cdrs_json_reader *r, cdrs_json_member *m) {
    if (r->state == 2) return r->failed ? -1 : 0;
    if (r->state == 0) {
        if (cdrs__only_space(r->p, (size_t)(r->end - r->p))) { /* empty config: {} */
            r->state = 2;
            return 0;
        }
        cdrs__json_ws(r);
        if (r->p == r->end || *r->p != '{') {
            r->p = r->start;
            cdrs_text t = cdrs__json_msg(r);
            cdrs_text_append(&t, "expected a JSON object");
            return -1;
        }
        r->p++;
        r->state = 1;
        cdrs__json_ws(r);
        if (r->p < r->end && *r->p == '}') goto end_object;
    } else {
        cdrs__json_ws(r);
        if (r->p < r->end && *r->p == '}') goto end_object;
        if (r->p >= r->end || *r->p != ',') return cdrs__json_fail_at(r, "expected ',' or '}'");
        r->p++;
        cdrs__json_ws(r);
    }
    if (r->p >= r->end || *r->p != '"') return cdrs__json_fail_at(r, "expected a key string");
    if (cdrs__json_string(r, &m->key, &m->key_len) < 0) return -1;
    for (size_t i = 0; i < r->nkeys; i++) {
        if (r->key_lens[i] == m->key_len && memcmp(r->keys[i], m->key, m->key_len) == 0) {
            cdrs_text t = cdrs__json_msg(r);
            cdrs_text_append(&t, "duplicate ");
            cdrs__json_append_key(&t, m);
            return -1;
        }
    }
    if (r->nkeys == CDRS_JSON_MAX_KEYS) return cdrs__json_fail_at(r, "too many keys");
    r->keys[r->nkeys] = m->key;
    r->key_lens[r->nkeys] = m->key_len;
    r->nkeys++;
    cdrs__json_ws(r);
    if (r->p >= r->end || *r->p != ':') return cdrs__json_fail_at(r, "expected ':'");
    r->p++;
    cdrs__json_ws(r);
    m->boolean = false;
    m->negative = false;
    m->magnitude = 0;
    m->string = NULL;
    m->string_len = 0;
    if (cdrs__json_value(r, m) < 0) return -1;
    return 1;
end_object:
    r->p++;
    cdrs__json_ws(r);
    if (r->p != r->end) return cdrs__json_fail_at(r, "trailing characters after the object");
    r->state = 2;
    return 0;
}

/* ------------------------------------------------------------------------ */
/* One field of a JSON record value, without building the document          */
/* ------------------------------------------------------------------------ */
/*
 * The C counterpart of the Rust SDK's `json::lookup`: finds the value at a
 * path of object keys in one scan, allocating nothing, and checks the JSON
 * grammar (RFC 8259) of the whole document on the way, so a record value
 * that is not JSON is an error. Keys are compared as raw bytes (a key
 * written with escapes does not match); with several equal keys in one
 * object the last wins. The path is at most CDRS_JSON_MAX_PATH deep and
 * containers nest at most CDRS_JSON_MAX_DEPTH deep.
 *
 *   static const char *const side_path[] = {"trade", "side"};
 *   cdrs_json_span v;
 *   int rc = cdrs_json_lookup(rec.value, rec.value_len, side_path, 2, &v);
 *   if (rc < 0) ... dead-letter: not JSON ...
 *   if (rc > 0 && cdrs_json_string_is(rec.value + v.start, v.len, "buy")) ...
 */

#define CDRS_JSON_MAX_PATH 128
#define CDRS_JSON_MAX_DEPTH 1024

/** Where a value lies in the document: bytes `start .. start + len`. */
typedef struct cdrs_json_span {
    size_t start;
    size_t len;
} cdrs_json_span;

#define CDRS__BAD ((size_t)-1)

static inline size_t cdrs__skip_ws(const uint8_t *d, size_t n, size_t i) {
    while (i < n && (d[i] == ' ' || d[i] == '\t' || d[i] == '\n' || d[i] == '\r')) i++;
    return i;
}

static inline bool cdrs__is_hex(uint8_t c) {
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

/* The index after the string token at d[i] ('"'), or CDRS__BAD. */
static inline size_t cdrs__scan_string(const uint8_t *d, size_t n, size_t i) {
    if (i >= n || d[i] != '"') return CDRS__BAD;
    i++;
    while (i < n) {
        uint8_t c = d[i];
        if (c == '"') return i + 1;
        if (c < 0x20) return CDRS__BAD;
        if (c != '\\') { i++; continue; }
        if (++i >= n) return CDRS__BAD;
        switch (d[i]) {
        case '"': case '\\': case '/': case 'b': case 'f': case 'n': case 'r': case 't':
            i++;
            break;
        case 'u':
            if (n - i < 5 || !cdrs__is_hex(d[i + 1]) || !cdrs__is_hex(d[i + 2]) ||
                !cdrs__is_hex(d[i + 3]) || !cdrs__is_hex(d[i + 4]))
                return CDRS__BAD;
            i += 5;
            break;
        default:
            return CDRS__BAD;
        }
    }
    return CDRS__BAD;
}

/* The index after the number at d[i] (RFC 8259 grammar), or CDRS__BAD. */
static inline size_t cdrs__scan_number(const uint8_t *d, size_t n, size_t i) {
    if (i < n && d[i] == '-') i++;
    if (i >= n) return CDRS__BAD;
    if (d[i] == '0') i++;
    else if (d[i] >= '1' && d[i] <= '9') while (i < n && d[i] >= '0' && d[i] <= '9') i++;
    else return CDRS__BAD;
    if (i < n && d[i] == '.') {
        i++;
        if (i >= n || d[i] < '0' || d[i] > '9') return CDRS__BAD;
        while (i < n && d[i] >= '0' && d[i] <= '9') i++;
    }
    if (i < n && (d[i] == 'e' || d[i] == 'E')) {
        i++;
        if (i < n && (d[i] == '+' || d[i] == '-')) i++;
        if (i >= n || d[i] < '0' || d[i] > '9') return CDRS__BAD;
        while (i < n && d[i] >= '0' && d[i] <= '9') i++;
    }
    return i;
}

/* The index after the value at d[i] (whitespace before it skipped), or
 * CDRS__BAD; containers are checked without recursion. */
static inline size_t cdrs__scan_value(const uint8_t *d, size_t n, size_t i) {
    uint8_t is_object[CDRS_JSON_MAX_DEPTH / 8];
    size_t depth = 0;
    for (;;) {
        /* a value at i */
        i = cdrs__skip_ws(d, n, i);
        if (i >= n) return CDRS__BAD;
        uint8_t c = d[i];
        if (c == '{' || c == '[') {
            if (depth == CDRS_JSON_MAX_DEPTH) return CDRS__BAD;
            if (c == '{') is_object[depth / 8] |= (uint8_t)(1u << (depth % 8));
            else is_object[depth / 8] &= (uint8_t)~(1u << (depth % 8));
            depth++;
            i = cdrs__skip_ws(d, n, i + 1);
            if (i < n && d[i] == (c == '{' ? '}' : ']')) {
                i++;
                depth--;
            } else if (c == '{') {
                i = cdrs__scan_string(d, n, i);
                if (i == CDRS__BAD) return CDRS__BAD;
                i = cdrs__skip_ws(d, n, i);
                if (i >= n || d[i] != ':') return CDRS__BAD;
                i++;
                continue;
            } else {
                continue;
            }
        } else if (c == '"') {
            i = cdrs__scan_string(d, n, i);
        } else if (c == '-' || (c >= '0' && c <= '9')) {
            i = cdrs__scan_number(d, n, i);
        } else if (n - i >= 4 && memcmp(d + i, "true", 4) == 0) {
            i += 4;
        } else if (n - i >= 5 && memcmp(d + i, "false", 5) == 0) {
            i += 5;
        } else if (n - i >= 4 && memcmp(d + i, "null", 4) == 0) {
            i += 4;
        } else {
            return CDRS__BAD;
        }
        if (i == CDRS__BAD) return CDRS__BAD;
        /* after a value: close containers, or go on to the next member */
        for (;;) {
            if (depth == 0) return i;
            bool obj = (is_object[(depth - 1) / 8] >> ((depth - 1) % 8)) & 1u;
            i = cdrs__skip_ws(d, n, i);
            if (i >= n) return CDRS__BAD;
            if (d[i] == (obj ? '}' : ']')) {
                i++;
                depth--;
                continue;
            }
            if (d[i] != ',') return CDRS__BAD;
            i = cdrs__skip_ws(d, n, i + 1);
            if (obj) {
                i = cdrs__scan_string(d, n, i);
                if (i == CDRS__BAD) return CDRS__BAD;
                i = cdrs__skip_ws(d, n, i);
                if (i >= n || d[i] != ':') return CDRS__BAD;
                i++;
            }
            break;
        }
    }
}

/* Follows path[level..] into the value at *i; *found and *out as
 * cdrs_json_lookup's. 0, or -1 if the document is not JSON. */
static inline int cdrs__lookup_in(const uint8_t *d, size_t n, size_t *i,
                                  const char *const *path, size_t path_len, size_t level,
                                  bool *found, cdrs_json_span *out) {
    size_t at = cdrs__skip_ws(d, n, *i);
    if (level == path_len) {
        size_t end = cdrs__scan_value(d, n, at);
        if (end == CDRS__BAD) return -1;
        out->start = at;
        out->len = end - at;
        *found = true;
        *i = end;
        return 0;
    }
    if (at >= n || d[at] != '{') {
        size_t end = cdrs__scan_value(d, n, at);
        if (end == CDRS__BAD) return -1;
        *i = end;
        return 0;
    }
    at = cdrs__skip_ws(d, n, at + 1);
    if (at < n && d[at] == '}') {
        *i = at + 1;
        return 0;
    }
    size_t want = strlen(path[level]);
    for (;;) {
        size_t key_end = cdrs__scan_string(d, n, at);
        if (key_end == CDRS__BAD) return -1;
        bool match = key_end - at - 2 == want && memcmp(d + at + 1, path[level], want) == 0;
        at = cdrs__skip_ws(d, n, key_end);
        if (at >= n || d[at] != ':') return -1;
        at++;
        if (match) {
            *found = false; /* the last equal key wins */
            if (cdrs__lookup_in(d, n, &at, path, path_len, level + 1, found, out) < 0) return -1;
        } else {
            at = cdrs__scan_value(d, n, at);
            if (at == CDRS__BAD) return -1;
        }
        at = cdrs__skip_ws(d, n, at);
        if (at < n && d[at] == '}') {
            *i = at + 1;
            return 0;
        }
        if (at >= n || d[at] != ',') return -1;
        at = cdrs__skip_ws(d, n, at + 1);
    }
}

/** Finds the value at `path` (`path_len` NUL-terminated object keys,
 *  outermost first) in the JSON document `doc[0..len]`. Returns 1 and sets
 *  `*out` (the value's raw bytes, e.g. `"buy"` with its quotes, or `{...}`)
 *  if found; 0 if some key on the path is missing or a step is not an
 *  object; -1 if `doc` is not one JSON document, or `path_len` exceeds
 *  CDRS_JSON_MAX_PATH or the nesting CDRS_JSON_MAX_DEPTH. */
static inline int cdrs_json_lookup(const uint8_t *doc, size_t len, const char *const *path,
                                   size_t path_len, cdrs_json_span *out) {
    if (doc == NULL || path_len > CDRS_JSON_MAX_PATH) return -1;
    bool found = false;
    size_t i = 0;
    if (cdrs__lookup_in(doc, len, &i, path, path_len, 0, &found, out) < 0) return -1;
    if (cdrs__skip_ws(doc, len, i) != len) return -1;
    return found ? 1 : 0;
}

/** True if the raw JSON value `raw[0..len]` (from cdrs_json_lookup) is a
 *  string equal to the NUL-terminated UTF-8 `s` once its escapes are
 *  decoded. */
static inline bool cdrs_json_string_is(const uint8_t *raw, size_t len, const char *s) {
    if (len < 2 || raw[0] != '"' || raw[len - 1] != '"') return false;
    size_t want = strlen(s);
    if (len - 2 == want && memchr(raw + 1, '\\', len - 2) == NULL)
        return memcmp(raw + 1, s, want) == 0;
    /* escapes: decode into a bounded buffer (decoding never grows) */
    char buf[512];
    if (len > sizeof buf) return false;
    memcpy(buf, raw, len);
    cdrs_json_reader r;
    cdrs_json_begin(&r, buf, len);
    const char *v;
    size_t v_len;
    if (cdrs__json_string(&r, &v, &v_len) < 0) return false;
    return v_len == want && memcmp(v, s, want) == 0;
}

#ifdef __cplusplus
}
#endif

#endif /* CDRS_PLUGIN_H */
