/* fmscore: score fmcli models from C (see fmscore.h).
 *
 * The file is read whole into one 64-byte aligned buffer, checked, and
 * scored in place: the arrays of a float32 file are used where they lie;
 * those of a float16 or int8 file are widened to float32 once, at open.
 *
 * Arithmetic: the same float32 operations in the same order as fmcli's
 * scoring kernels (fmcli/_core): a row's values scaled in float32 (value *
 * 1/||x|| when the model normalises instances), each linear term a float32
 * product added to a double score, the pair terms summed in float32 as
 * fmcli's SSE loops sum them (four lanes, written here in portable C), the
 * pair sum added to the double score.  Compiled without -ffast-math and
 * without fused multiply-add contraction, the scores are those of fmcli on
 * x86-64 bit for bit; elsewhere they agree to float32 rounding.  (x86-64's
 * baseline instruction set has no fused multiply-add; gcc contracts none in
 * -std=c99 mode and clang none after the pragma below, whatever -march.)
 *
 * C99, libc and libm only; no global state.
 */
#include "fmscore.h"

#include <math.h>

#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#endif
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* x86's SSE, part of every x86-64 compiler, runs the FFM pair loop four
 * lanes at a time; the portable loop does the same operations one lane at
 * a time (the results are identical).  -DFMS_NO_SIMD leaves SSE out. */
#if !defined(FMS_NO_SIMD) && (defined(__SSE__) || defined(_M_X64))
#include <xmmintrin.h>
#define FMS_SSE 1
#else
#define FMS_SSE 0
#endif

/* ---- the file layout (fm-model(5), INFERENCE FILES) -------------------- */

#define HEADER_SIZE 256
#define TRAILER_SIZE 24
#define ALIGNMENT 64
#define MAX_K 1024
#define N_ARRAYS 7
#define TABLE_OFFSET 64          /* the array table: (offset u64, bytes u64) per array */

static const unsigned char MAGIC[8] = {0x89, 'F', 'M', 'I', '\r', '\n', 0x1a, '\n'};
static const unsigned char TRAILER_MAGIC[8] = {'F', 'M', 'I', 'E', 'N', 'D', 0, 0};

/* header flags */
#define FLAG_BIAS 1u
#define FLAG_LINEAR 2u
#define FLAG_NORMALIZE 4u
#define FLAG_ID_MAP 8u
#define KNOWN_FLAGS 15u

/* storage types */
enum { DT_F32 = 0, DT_F16 = 1, DT_I8 = 2 };

/* the arrays of the table, in its order */
enum { A_BIAS, A_LINEAR, A_FACTORS, A_SCALES, A_PAIRS, A_ID_KEYS, A_ID_SLOTS };
static const char *const ARRAY_NAMES[N_ARRAYS] = {"bias", "linear", "factors", "factor_scales",
                                                  "pairs", "id_keys", "id_slots"};

struct fms_model {
    fms_info info;
    void *block;                 /* the allocation holding the file */
    float *widened[N_ARRAYS];    /* float32 copies of float16 / int8 arrays (else NULL) */
    const float *bias, *linear, *factors, *pairs;
    const int32_t *id_keys, *id_slots;
    int64_t n, m;                /* features, fields */
    int64_t blocks;              /* factor k-vectors per class */
    int k, n_classes, kind, fielded;
};

/* ---- small helpers ----------------------------------------------------- */

static void set_error(fms_error *err, int code, const char *name, const char *fmt, ...) {
    va_list ap;
    size_t used = 0;
    if (err == NULL) return;
    err->code = code;
    if (name != NULL) {
        int w = snprintf(err->message, sizeof err->message, "%s: ", name);
        used = w < 0 ? 0 : (size_t)w < sizeof err->message ? (size_t)w : sizeof err->message - 1;
    }
    va_start(ap, fmt);
    vsnprintf(err->message + used, sizeof err->message - used, fmt, ap);
    va_end(ap);
}

static uint16_t rd16(const unsigned char *p) { return (uint16_t)(p[0] | (p[1] << 8)); }

static uint32_t rd32(const unsigned char *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

static uint64_t rd64(const unsigned char *p) { return (uint64_t)rd32(p) | ((uint64_t)rd32(p + 4) << 32); }

/* a * b into *out; 0 when it overflows */
static int mul_ok(uint64_t a, uint64_t b, uint64_t *out) {
    if (a != 0 && b > UINT64_MAX / a) return 0;
    *out = a * b;
    return 1;
}

static int host_is_big_endian(void) {
    const uint16_t one = 1;
    return *(const unsigned char *)&one == 0;
}

static void swap_bytes(unsigned char *p, uint64_t count, int width) {
    for (uint64_t i = 0; i < count; i++, p += width)
        for (int a = 0, b = width - 1; a < b; a++, b--) {
            unsigned char t = p[a];
            p[a] = p[b];
            p[b] = t;
        }
}

/* CRC-32 (the polynomial of zlib and PNG), with a table built by the caller */
static void crc32_table(uint32_t table[256]) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int b = 0; b < 8; b++) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        table[i] = c;
    }
}

static uint32_t crc32_of(const uint32_t table[256], const unsigned char *p, uint64_t n) {
    uint32_t c = 0xFFFFFFFFu;
    for (uint64_t i = 0; i < n; i++) c = table[(c ^ p[i]) & 0xFFu] ^ (c >> 8);
    return c ^ 0xFFFFFFFFu;
}

/* IEEE half precision -> float (exact); *finite = 0 for an infinity or NaN */
static float half_to_float(uint16_t h, int *finite) {
    const int exp = (h >> 10) & 0x1f, mant = h & 0x3ff;
    float v;
    if (exp == 31) {
        *finite = 0;
        return 0.0f;
    }
    v = exp == 0 ? ldexpf((float)mant, -24) : ldexpf((float)(mant | 0x400), exp - 25);
    return (h & 0x8000) ? -v : v;
}

/* ---- opening ------------------------------------------------------------ */

int fms_api_version(void) { return FMS_API_VERSION; }

const char *fms_strerror(int code) {
    switch (code) {
    case FMS_OK: return "no error";
    case FMS_ERR_IO: return "cannot read the file";
    case FMS_ERR_MAGIC: return "not an fmcli inference file";
    case FMS_ERR_VERSION: return "a newer inference file format";
    case FMS_ERR_TRUNCATED: return "the file is truncated";
    case FMS_ERR_CHECKSUM: return "checksum mismatch: the file is corrupt";
    case FMS_ERR_FORMAT: return "invalid inference file";
    case FMS_ERR_NOMEM: return "out of memory";
    case FMS_ERR_ARGUMENT: return "invalid argument";
    case FMS_ERR_NONFINITE: return "a score is not a finite number";
    default: return "unknown error";
    }
}

void fms_close(fms_model *model) {
    if (model == NULL) return;
    for (int a = 0; a < N_ARRAYS; a++) free(model->widened[a]);
    free(model->block);
    free(model);
}

const fms_info *fms_model_info(const fms_model *model) { return model ? &model->info : NULL; }

int fms_outputs(const fms_model *model) { return model ? model->n_classes : 0; }

/* A new model owning an aligned buffer of `size` bytes (*data points into it). */
static fms_model *new_model(size_t size, unsigned char **data) {
    fms_model *m = (fms_model *)calloc(1, sizeof *m);
    unsigned char *raw;
    if (m == NULL) return NULL;
    if (size > (size_t)-1 - ALIGNMENT || (raw = (unsigned char *)malloc(size + ALIGNMENT)) == NULL) {
        free(m);
        return NULL;
    }
    m->block = raw;
    *data = raw + (ALIGNMENT - (size_t)((uintptr_t)raw % ALIGNMENT)) % ALIGNMENT;
    return m;
}

/* Widen array a (count values at p: float16, or int8 factors with their
 * float16 scales, one per k values) to float32; checks finiteness. */
static int widen(fms_model *M, int a, const unsigned char *p, uint64_t count, int dtype,
                 const uint16_t *scales, const char *name, fms_error *err) {
    float *out = (float *)malloc((size_t)(count ? count : 1) * sizeof(float));
    int finite = 1;
    if (out == NULL) {
        set_error(err, FMS_ERR_NOMEM, name, "no memory to widen array '%s'", ARRAY_NAMES[a]);
        return 0;
    }
    M->widened[a] = out;
    if (dtype == DT_F16) {
        for (uint64_t i = 0; i < count; i++) out[i] = half_to_float(((const uint16_t *)(const void *)p)[i], &finite);
    } else {   /* int8: q * scale, rounded to float32 as fmcli's loader does */
        const signed char *q = (const signed char *)p;
        for (uint64_t i = 0; i < count; i += (uint64_t)M->k) {
            const float s = half_to_float(scales[i / (uint64_t)M->k], &finite);
            for (uint64_t d = i; d < i + (uint64_t)M->k; d++) out[d] = (float)q[d] * s;
        }
    }
    if (!finite) {
        set_error(err, FMS_ERR_FORMAT, name, "array '%s' holds an infinity or NaN", ARRAY_NAMES[a]);
        return 0;
    }
    return 1;
}

static int all_finite(const float *p, uint64_t count) {
    for (uint64_t i = 0; i < count; i++)
        if (!isfinite(p[i])) return 0;
    return 1;
}

/* Validate the file's bytes at data[0 .. size) and set up the model. */
static int load(fms_model *M, unsigned char *data, uint64_t size, const char *name, fms_error *err) {
    uint32_t table[256];
    uint64_t declared, payload_end, off[N_ARRAYS], len[N_ARRAYS], want[N_ARRAYS];
    int width[N_ARRAYS];
    fms_info *I = &M->info;
    unsigned flags, dtype, api;
    uint64_t n, m, k, C, blocks, tmp, n_ids;

    if (size < 8 || memcmp(data, MAGIC, 8) != 0) {
        set_error(err, FMS_ERR_MAGIC, name, "not an fmcli inference file (wrong magic bytes; "
                  "write one with fm convert MODEL --to inference)");
        return 0;
    }
    if (size < 16) {
        set_error(err, FMS_ERR_TRUNCATED, name, "truncated: %llu bytes, shorter than the header",
                  (unsigned long long)size);
        return 0;
    }
    I->format_major = rd16(data + 8);
    I->format_minor = rd16(data + 10);
    api = rd32(data + 12);
    if (I->format_major > FMS_FORMAT_MAJOR || I->format_major < 1) {
        set_error(err, FMS_ERR_VERSION, name, "inference format %d.%d; this scorer reads %d.x "
                  "(use a newer fmscore)", I->format_major, I->format_minor, FMS_FORMAT_MAJOR);
        return 0;
    }
    if (api > FMS_API_VERSION) {
        set_error(err, FMS_ERR_VERSION, name, "the file needs scorer API version %u; this is %d "
                  "(use a newer fmscore)", api, FMS_API_VERSION);
        return 0;
    }
    if (size < HEADER_SIZE + TRAILER_SIZE) {
        set_error(err, FMS_ERR_TRUNCATED, name, "truncated: %llu bytes, shorter than the header",
                  (unsigned long long)size);
        return 0;
    }
    declared = rd64(data + 16);
    if (declared > size) {
        set_error(err, FMS_ERR_TRUNCATED, name, "truncated: %llu bytes of %llu",
                  (unsigned long long)size, (unsigned long long)declared);
        return 0;
    }
    if (declared < size) {
        set_error(err, FMS_ERR_FORMAT, name, "%llu bytes after the end of the model",
                  (unsigned long long)(size - declared));
        return 0;
    }
    payload_end = size - TRAILER_SIZE;
    if (memcmp(data + payload_end, TRAILER_MAGIC, 8) != 0 || rd64(data + payload_end + 8) != payload_end) {
        set_error(err, FMS_ERR_FORMAT, name, "the trailer is missing or damaged");
        return 0;
    }
    crc32_table(table);
    if (crc32_of(table, data, payload_end) != rd32(data + payload_end + 16)) {
        set_error(err, FMS_ERR_CHECKSUM, name, "checksum mismatch: the file is corrupt");
        return 0;
    }

    /* the model's description */
    I->kind = (int)rd32(data + 24);
    I->task = (int)rd32(data + 28);
    C = rd32(data + 32);
    k = rd32(data + 36);
    n = rd32(data + 40);
    m = rd32(data + 44);
    flags = rd32(data + 48);
    dtype = rd32(data + 52);
    n_ids = rd32(data + 56);
    I->source_crc = rd32(data + 60);
    if (I->kind < FMS_LR || I->kind > FMS_FMFM || I->task < FMS_BINARY || I->task > FMS_MULTICLASS) {
        set_error(err, FMS_ERR_FORMAT, name, "unknown model kind %d or task %d", I->kind, I->task);
        return 0;
    }
    if ((I->task == FMS_MULTICLASS) ? (C < 2 || C > (1u << 20)) : C != 1) {
        set_error(err, FMS_ERR_FORMAT, name, "%llu classes for task %d", (unsigned long long)C, I->task);
        return 0;
    }
    if (k < 1 || k > MAX_K || n > 0x80000000u || m > 0x80000000u || (flags & ~KNOWN_FLAGS) || dtype > DT_I8) {
        set_error(err, FMS_ERR_FORMAT, name, "invalid sizes or flags (k=%llu, n_features=%llu, "
                  "n_fields=%llu, flags=%u, dtype=%u)", (unsigned long long)k, (unsigned long long)n,
                  (unsigned long long)m, flags, dtype);
        return 0;
    }
    if ((flags & FLAG_ID_MAP) ? n_ids != n : n_ids != 0) {
        set_error(err, FMS_ERR_FORMAT, name, "the id map has %llu ids for %llu features",
                  (unsigned long long)n_ids, (unsigned long long)n);
        return 0;
    }
    I->n_classes = (int)C;
    I->k = (int)k;
    I->n_features = (int64_t)n;
    I->n_fields = (int64_t)m;
    I->use_bias = (flags & FLAG_BIAS) != 0;
    I->use_linear = (flags & FLAG_LINEAR) != 0;
    I->normalize = (flags & FLAG_NORMALIZE) != 0;
    I->has_id_map = (flags & FLAG_ID_MAP) != 0;
    I->dtype = (int)dtype;
    blocks = I->kind == FMS_LR ? 0 : I->kind == FMS_FFM ? n * m : n;

    /* what each array must hold: values and their width in bytes */
    memset(want, 0, sizeof want);
    width[A_BIAS] = 4;
    width[A_LINEAR] = dtype == DT_F32 ? 4 : 2;
    width[A_FACTORS] = dtype == DT_F32 ? 4 : dtype == DT_F16 ? 2 : 1;
    width[A_SCALES] = 2;
    width[A_PAIRS] = dtype == DT_F32 ? 4 : 2;
    width[A_ID_KEYS] = width[A_ID_SLOTS] = 4;
    if (I->use_bias) want[A_BIAS] = C;
    if (I->use_linear) want[A_LINEAR] = C * n;
    if (!mul_ok(C, blocks, &tmp) || !mul_ok(tmp, k, &want[A_FACTORS])) goto too_large;
    if (dtype == DT_I8) want[A_SCALES] = C * blocks;
    if (I->kind == FMS_FWFM || I->kind == FMS_FMFM) {
        if (!mul_ok(m, m, &tmp) || !mul_ok(tmp, C, &tmp)) goto too_large;
        if (I->kind == FMS_FMFM && !mul_ok(tmp, k * k, &tmp)) goto too_large;
        want[A_PAIRS] = tmp;
    }
    want[A_ID_KEYS] = want[A_ID_SLOTS] = n_ids;
    for (int a = 0; a < N_ARRAYS; a++) {
        uint64_t bytes;
        off[a] = rd64(data + TABLE_OFFSET + 16 * a);
        len[a] = rd64(data + TABLE_OFFSET + 16 * a + 8);
        if (!mul_ok(want[a], (uint64_t)width[a], &bytes)) goto too_large;
        if (len[a] != bytes) {
            set_error(err, FMS_ERR_FORMAT, name, "array '%s' holds %llu bytes, expected %llu",
                      ARRAY_NAMES[a], (unsigned long long)len[a], (unsigned long long)bytes);
            return 0;
        }
        if (bytes && (off[a] % ALIGNMENT != 0 || off[a] < HEADER_SIZE || off[a] > payload_end
                      || bytes > payload_end - off[a])) {
            set_error(err, FMS_ERR_FORMAT, name, "array '%s' (offset %llu, %llu bytes) lies outside "
                      "the file or is not 64-byte aligned", ARRAY_NAMES[a], (unsigned long long)off[a],
                      (unsigned long long)bytes);
            return 0;
        }
    }
    if (host_is_big_endian())
        for (int a = 0; a < N_ARRAYS; a++) swap_bytes(data + off[a], want[a], width[a]);

    /* the arrays, float32 in memory, every weight finite */
    M->n = (int64_t)n;
    M->m = (int64_t)m;
    M->k = (int)k;
    M->n_classes = (int)C;
    M->kind = I->kind;
    M->blocks = (int64_t)blocks;
    M->fielded = I->kind == FMS_FFM || I->kind == FMS_FWFM || I->kind == FMS_FMFM;
    {
        const uint16_t *scales = (const uint16_t *)(const void *)(data + off[A_SCALES]);
        const float **dest[N_ARRAYS] = {&M->bias, &M->linear, &M->factors, NULL, &M->pairs, NULL, NULL};
        for (int a = 0; a < N_ARRAYS; a++) {
            if (dest[a] == NULL || want[a] == 0) continue;
            if (width[a] == 4) {
                *dest[a] = (const float *)(const void *)(data + off[a]);
                if (!all_finite(*dest[a], want[a])) {
                    set_error(err, FMS_ERR_FORMAT, name, "array '%s' holds an infinity or NaN", ARRAY_NAMES[a]);
                    return 0;
                }
            } else {
                if (!widen(M, a, data + off[a], want[a], width[a] == 2 ? DT_F16 : DT_I8, scales, name, err))
                    return 0;
                *dest[a] = M->widened[a];
            }
        }
    }
    if (n_ids) {
        M->id_keys = (const int32_t *)(const void *)(data + off[A_ID_KEYS]);
        M->id_slots = (const int32_t *)(const void *)(data + off[A_ID_SLOTS]);
        for (uint64_t i = 0; i < n_ids; i++) {
            if ((i && M->id_keys[i] <= M->id_keys[i - 1]) || M->id_keys[i] < 0
                || M->id_slots[i] < 0 || (uint64_t)M->id_slots[i] >= n) {
                set_error(err, FMS_ERR_FORMAT, name, "the id map is not sorted or names a slot "
                          "outside the model (entry %llu)", (unsigned long long)i);
                return 0;
            }
        }
    }
    if (err != NULL) {
        err->code = FMS_OK;
        err->message[0] = '\0';
    }
    return 1;

too_large:
    set_error(err, FMS_ERR_FORMAT, name, "array sizes overflow (n_features=%llu, n_fields=%llu, k=%llu)",
              (unsigned long long)n, (unsigned long long)m, (unsigned long long)k);
    return 0;
}

fms_model *fms_open_memory(const void *bytes, size_t size, fms_error *err) {
    unsigned char *data;
    fms_model *M;
    if (bytes == NULL && size) {
        set_error(err, FMS_ERR_ARGUMENT, NULL, "no data given");
        return NULL;
    }
    M = new_model(size, &data);
    if (M == NULL) {
        set_error(err, FMS_ERR_NOMEM, NULL, "no memory for a model of %llu bytes", (unsigned long long)size);
        return NULL;
    }
    if (size) memcpy(data, bytes, size);
    if (!load(M, data, size, "<memory>", err)) {
        fms_close(M);
        return NULL;
    }
    return M;
}

fms_model *fms_open(const char *path, fms_error *err) {
    FILE *f;
    long end;
    unsigned char *data;
    fms_model *M;
    if (path == NULL) {
        set_error(err, FMS_ERR_ARGUMENT, NULL, "no path given");
        return NULL;
    }
    f = fopen(path, "rb");
    if (f == NULL) {
        set_error(err, FMS_ERR_IO, path, "cannot open the file");
        return NULL;
    }
    /* a directory opens on some systems but cannot be read */
    (void)fgetc(f);
    if (ferror(f) || fseek(f, 0, SEEK_END) != 0 || (end = ftell(f)) < 0 || fseek(f, 0, SEEK_SET) != 0) {
        fclose(f);
        set_error(err, FMS_ERR_IO, path, "cannot read the file (not a regular file?)");
        return NULL;
    }
    M = new_model((size_t)end, &data);
    if (M == NULL) {
        fclose(f);
        set_error(err, FMS_ERR_NOMEM, path, "no memory for a model of %ld bytes", end);
        return NULL;
    }
    if (fread(data, 1, (size_t)end, f) != (size_t)end) {
        fclose(f);
        fms_close(M);
        set_error(err, FMS_ERR_IO, path, "cannot read the file");
        return NULL;
    }
    fclose(f);
    if (!load(M, data, (uint64_t)end, path, err)) {
        fms_close(M);
        return NULL;
    }
    return M;
}

/* ---- scoring ------------------------------------------------------------ */

/* The slot of feature id `id`, or -1 when the model has no weights for it. */
static int64_t slot_of(const fms_model *M, int32_t id) {
    if (id < 0) return -1;
    if (M->id_keys == NULL) return (int64_t)id < M->n ? (int64_t)id : -1;
    {
        int64_t lo = 0, hi = M->n;   /* binary search in the sorted ids */
        while (lo < hi) {
            const int64_t mid = lo + (hi - lo) / 2;
            if (M->id_keys[mid] < id) lo = mid + 1;
            else hi = mid;
        }
        return (lo < M->n && M->id_keys[lo] == id) ? (int64_t)M->id_slots[lo] : -1;
    }
}

/* Index of the field-pair parameters of fields a and b (the upper triangle). */
static int64_t field_pair(int64_t a, int64_t b, int64_t m) { return a <= b ? a * m + b : b * m + a; }

/* The pair terms are summed in float32 exactly as fmcli's float32 kernels
 * sum them (fmcli/_core/ffm_f32.h, fwfm_f32.h, fmfm_f32.h): in four lanes,
 * lane q taking the products of the k-vectors' entries d with d % 4 == q,
 * the lanes added up as (lane 0 + lane 2) + (lane 1 + lane 3) at the end.
 * With the same float32 weights and values, and compiled with IEEE float32
 * arithmetic (no -ffast-math, no fused multiply-add contraction), the
 * scores are fmcli's bit for bit. */
static float lanes_sum(const float a[4]) { return (a[0] + a[2]) + (a[1] + a[3]); }

/* FFM: w[j_i, f_l] . w[j_l, f_i] x_i x_l over the pairs i < l, with
 * oj[i] = j_i m k and of[i] = f_i k (the offsets of entry i's blocks).  The
 * pairs of entry i alternate between two sets of lanes, a and b. */
#define FFM_PAIR(A, L)                                                            \
    do {                                                                          \
        const float *w1 = row1 + of[L], *w2 = col1 + oj[L];                       \
        const float v = x1 * x[L];                                                \
        int d = 0;                                                                \
        for (; d < k4; d += 4) {                                                  \
            A[0] = A[0] + (w1[d] * w2[d]) * v;                                    \
            A[1] = A[1] + (w1[d + 1] * w2[d + 1]) * v;                            \
            A[2] = A[2] + (w1[d + 2] * w2[d + 2]) * v;                            \
            A[3] = A[3] + (w1[d + 3] * w2[d + 3]) * v;                            \
        }                                                                         \
        for (; d < k; d++) A[d & 3] = A[d & 3] + (w1[d] * w2[d]) * v;             \
    } while (0)

#if FMS_SSE
/* The same operations on SSE registers, four lanes at once (k a multiple of
 * 4; called with constant k for the common sizes, which unrolls the loop). */
static inline float ffm_pairs_sse(const float *F, const int k, const int64_t *oj, const int64_t *of,
                                  const float *x, int64_t cnt) {
    __m128 va = _mm_setzero_ps(), vb = _mm_setzero_ps();
    float sum[4];
    for (int64_t i = 0; i < cnt; i++) {
        const float *row1 = F + oj[i], *col1 = F + of[i];
        const float x1 = x[i];
        int64_t l = i + 1;
#define FFM_PAIR_SSE(A, L)                                                                        \
    do {                                                                                          \
        const float *w1 = row1 + of[L], *w2 = col1 + oj[L];                                       \
        const __m128 v = _mm_set1_ps(x1 * x[L]);                                                  \
        for (int d = 0; d < k; d += 4)                                                            \
            A = _mm_add_ps(A, _mm_mul_ps(_mm_mul_ps(_mm_loadu_ps(w1 + d), _mm_loadu_ps(w2 + d)), v)); \
    } while (0)
        for (; l + 1 < cnt; l += 2) {
            FFM_PAIR_SSE(va, l);
            FFM_PAIR_SSE(vb, l + 1);
        }
        if (l < cnt) FFM_PAIR_SSE(va, l);
#undef FFM_PAIR_SSE
    }
    _mm_storeu_ps(sum, _mm_add_ps(va, vb));
    return lanes_sum(sum);
}
#endif

static float ffm_pairs(const float *F, int k, const int64_t *oj, const int64_t *of, const float *x,
                       int64_t cnt) {
    float a[4] = {0.0f, 0.0f, 0.0f, 0.0f}, b[4] = {0.0f, 0.0f, 0.0f, 0.0f}, sum[4];
    const int k4 = k & ~3;
#if FMS_SSE
    if (k == 4) return ffm_pairs_sse(F, 4, oj, of, x, cnt);
    if (k == 8) return ffm_pairs_sse(F, 8, oj, of, x, cnt);
    if (k4 == k) return ffm_pairs_sse(F, k, oj, of, x, cnt);
#endif
    for (int64_t i = 0; i < cnt; i++) {
        const float *row1 = F + oj[i], *col1 = F + of[i];
        const float x1 = x[i];
        int64_t l = i + 1;
        for (; l + 1 < cnt; l += 2) {
            FFM_PAIR(a, l);
            FFM_PAIR(b, l + 1);
        }
        if (l < cnt) FFM_PAIR(a, l);
    }
    for (int q = 0; q < 4; q++) sum[q] = a[q] + b[q];
    return lanes_sum(sum);
}
#undef FFM_PAIR

/* FwFM: r[f_i, f_l] (v_i . v_l) x_i x_l; lanes by the parity of l and of
 * the group of four entries d belongs to. */
static float fwfm_pairs(const float *F, const float *R, int64_t m, int k, const int64_t *j, const int64_t *f,
                        const float *x, int64_t cnt) {
    float acc[2][2][4], sum[4];
    memset(acc, 0, sizeof acc);
    for (int64_t i = 0; i < cnt; i++) {
        const float *vi = F + (size_t)j[i] * (size_t)k;
        for (int64_t l = i + 1; l < cnt; l++) {
            const float *vl = F + (size_t)j[l] * (size_t)k;
            const float s = R[field_pair(f[i], f[l], m)] * (x[i] * x[l]);
            float (*A)[4] = acc[l & 1];
            for (int d = 0; d < k; d++) A[(d >> 2) & 1][d & 3] = A[(d >> 2) & 1][d & 3] + (vi[d] * vl[d]) * s;
        }
    }
    for (int q = 0; q < 4; q++) sum[q] = (acc[0][0][q] + acc[0][1][q]) + (acc[1][0][q] + acc[1][1][q]);
    return lanes_sum(sum);
}

/* Entry d of P^T v for FmFM's k x k matrix P (row-major): sum_r v[r] P[r][d]. */
static float tmul(const float *P, const float *v, int k, int d) {
    float u = 0.0f;
    for (int r = 0; r < k; r++) u = u + v[r] * P[(size_t)r * (size_t)k + (size_t)d];
    return u;
}

/* FmFM: v_lo^T M v_hi x_i x_l with lo the entry of the lower field; within
 * one field (v_i^T M v_l + v_l^T M v_i) / 2. */
static float fmfm_pairs(const float *F, const float *R, int64_t m, int k, const int64_t *j, const int64_t *f,
                        const float *x, int64_t cnt) {
    const size_t kk = (size_t)k * (size_t)k;
    float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (int64_t i = 0; i < cnt; i++) {
        const float *vi = F + (size_t)j[i] * (size_t)k;
        for (int64_t l = i + 1; l < cnt; l++) {
            const float *vl = F + (size_t)j[l] * (size_t)k;
            const float *P = R + (size_t)field_pair(f[i], f[l], m) * kk;
            if (f[i] == f[l]) {
                const float h = 0.5f * (x[i] * x[l]);
                for (int d = 0; d < k; d++) {
                    float t = tmul(P, vi, k, d) * vl[d];
                    t = t + tmul(P, vl, k, d) * vi[d];
                    acc[d & 3] = acc[d & 3] + h * t;
                }
            } else {
                const float *vlo = f[i] < f[l] ? vi : vl, *vhi = f[i] < f[l] ? vl : vi;
                const float s = x[i] * x[l];
                for (int d = 0; d < k; d++) acc[d & 3] = acc[d & 3] + s * (tmul(P, vlo, k, d) * vhi[d]);
            }
        }
    }
    return lanes_sum(acc);
}

/* The raw score of class c for a row compacted to `cnt` entries (slot j,
 * field f, scaled value x); acc: k floats, oj and of: cnt offsets of work
 * space. */
static double score_class(const fms_model *M, int c, const int64_t *j, const int64_t *f, const float *x,
                          int64_t cnt, float *acc, int64_t *oj, int64_t *of) {
    const int k = M->k;
    const int64_t n = M->n, m = M->m;
    const float *F = M->factors ? M->factors + (size_t)c * (size_t)M->blocks * (size_t)k : NULL;
    double t = 0;
    if (M->bias) t += M->bias[c];
    if (M->linear) {
        const float *L = M->linear + (size_t)c * (size_t)n;
        for (int64_t i = 0; i < cnt; i++) t += (double)(L[j[i]] * x[i]);
    }
    if (M->kind == FMS_FM) {
        /* 0.5 ((sum_i v_i x_i)^2 - sum_i (v_i x_i)^2), summed in float32 in
         * the order of fmcli's kernel (its cancellation makes that rounding
         * part of the score) */
        float sq = 0.0f, sum = 0.0f;
        for (int d = 0; d < k; d++) acc[d] = 0.0f;
        for (int64_t i = 0; i < cnt; i++) {
            const float *w = F + (size_t)j[i] * (size_t)k;
            for (int d = 0; d < k; d++) {
                const float v = w[d] * x[i];
                acc[d] = acc[d] + v;
                sq = sq + v * v;
            }
        }
        for (int d = 0; d < k; d++) sum = sum + acc[d] * acc[d];
        t += 0.5 * (double)(sum - sq);
    } else if (M->kind == FMS_FFM) {
        /* the blocks' offsets: entry i's feature, and its field within a feature */
        for (int64_t i = 0; i < cnt; i++) {
            oj[i] = j[i] * m * k;
            of[i] = f[i] * k;
        }
        t += ffm_pairs(F, k, oj, of, x, cnt);
    } else if (M->kind == FMS_FWFM) {
        t += fwfm_pairs(F, M->pairs + (size_t)c * (size_t)m * (size_t)m, m, k, j, f, x, cnt);
    } else if (M->kind == FMS_FMFM) {
        t += fmfm_pairs(F, M->pairs + (size_t)c * (size_t)m * (size_t)m * (size_t)k * (size_t)k, m, k, j, f,
                        x, cnt);
    }
    return t;
}

static int score(const fms_model *M, size_t n_rows, const int64_t *indptr, const int32_t *fields,
                 const int32_t *features, const float *values, double *out, int probabilities) {
    int64_t longest = 0;
    int64_t *j, *f, *oj, *of;
    float *x;
    float *acc;
    void *work;
    int bad = 0;
    const int C = M ? M->n_classes : 0;
    if (M == NULL || indptr == NULL || out == NULL) return FMS_ERR_ARGUMENT;
    if (indptr[0] < 0) return FMS_ERR_ARGUMENT;
    for (size_t r = 0; r < n_rows; r++) {
        if (indptr[r + 1] < indptr[r]) return FMS_ERR_ARGUMENT;
        if (indptr[r + 1] - indptr[r] > longest) longest = indptr[r + 1] - indptr[r];
    }
    if (indptr[n_rows] > indptr[0] && (features == NULL || (M->fielded && fields == NULL)))
        return FMS_ERR_ARGUMENT;     /* entries to read, but not their features or fields */
    /* one allocation per call: the compacted row and FM's sums */
    work = malloc((size_t)(longest + 1) * (4 * sizeof(int64_t) + sizeof(float))
                  + (size_t)(M->k + 2) * sizeof(float));
    if (work == NULL) return FMS_ERR_NOMEM;
    j = (int64_t *)work;
    f = j + longest + 1;
    oj = f + longest + 1;
    of = oj + longest + 1;
    x = (float *)(void *)(of + longest + 1);
    acc = x + longest + 1;

    /* floats of one feature's factor blocks */
    const size_t row_floats = (size_t)M->k * (size_t)(M->kind == FMS_FFM ? M->m : 1);
    for (size_t r = 0; r < n_rows; r++) {
        const int64_t start = indptr[r], nnz = indptr[r + 1] - start;
        float scale = 1.0f;
        int64_t cnt = 0;
        double *o = out + r * (size_t)C;
#if defined(__GNUC__)
        /* a row reads blocks scattered over the model: start loading the
         * next row's (class 0's) while this one is scored */
        if (r + 1 < n_rows && M->factors != NULL) {
            for (int64_t i = indptr[r + 1]; i < indptr[r + 2]; i++) {
                const int64_t slot = slot_of(M, features[i]);
                if (slot < 0) continue;
                const char *p = (const char *)(M->factors + (size_t)slot * row_floats);
                for (size_t off = 0; off < row_floats * sizeof(float); off += 64) __builtin_prefetch(p + off, 0, 1);
            }
        }
#endif
        if (M->info.normalize) {
            /* instance normalisation over every entry, known to the model or not */
            double ss = 0;
            for (int64_t i = 0; i < nnz; i++) {
                const double v = values ? (double)values[start + i] : 1.0;
                ss += v * v;
            }
            if (ss > 0) scale = (float)(1.0 / sqrt(ss));
        }
        for (int64_t i = 0; i < nnz; i++) {
            const int64_t slot = slot_of(M, features[start + i]);
            const int64_t fld = fields ? fields[start + i] : 0;
            if (slot < 0 || (M->fielded && (fld < 0 || fld >= M->m))) continue;
            j[cnt] = slot;
            f[cnt] = fld;
            x[cnt] = (float)((values ? values[start + i] : 1.0f) * scale);
            cnt++;
        }
        for (int c = 0; c < C; c++) {
            o[c] = score_class(M, c, j, f, x, cnt, acc, oj, of);
            if (!isfinite(o[c])) bad = 1;
        }
        if (!probabilities) continue;
        if (M->info.task == FMS_BINARY) {
            /* 1 / (1 + e^-s) without overflow */
            const double e = exp(-fabs(o[0]));
            o[0] = o[0] >= 0 ? 1.0 / (1.0 + e) : e / (1.0 + e);
        } else if (M->info.task == FMS_MULTICLASS) {
            double top = o[0], sum = 0;
            for (int c = 1; c < C; c++)
                if (o[c] > top) top = o[c];
            for (int c = 0; c < C; c++) sum += (o[c] = exp(o[c] - top));
            for (int c = 0; c < C; c++) o[c] /= sum;
        }
    }
    free(work);
    return bad ? FMS_ERR_NONFINITE : FMS_OK;
}

int fms_score(const fms_model *model, size_t n_rows, const int64_t *indptr, const int32_t *fields,
              const int32_t *features, const float *values, double *out) {
    return score(model, n_rows, indptr, fields, features, values, out, 1);
}

int fms_score_raw(const fms_model *model, size_t n_rows, const int64_t *indptr, const int32_t *fields,
                  const int32_t *features, const float *values, double *out) {
    return score(model, n_rows, indptr, fields, features, values, out, 0);
}
