/* fmscore: score fmcli models from C.
 *
 * A dependency-free C99 scorer for the inference files that
 *
 *     fm convert MODEL.fm --to inference -o MODEL.fmi
 *
 * writes (their layout is documented in fm-model(5), section INFERENCE
 * FILES).  It scores LR, FM, FFM, FwFM and FmFM models of every task
 * (binary, regression, multiclass) and gives the same numbers as
 * `fm predict` on the same rows.
 *
 * Build: compile fmscore.c with your program (it needs libc and libm only):
 *
 *     cc -O2 -std=c99 -I"$(python -m fmcli.inference --include-dir)" \
 *        app.c "$(python -m fmcli.inference --include-dir)/fmscore.c" -lm
 *
 * Use:
 *
 *     fms_error err;
 *     fms_model *m = fms_open("ctr.fmi", &err);
 *     if (!m) { fprintf(stderr, "%s\n", err.message); return 1; }
 *     fms_score(m, n_rows, indptr, fields, features, values, out);
 *     fms_close(m);
 *
 * Rows are given in compressed sparse row form: row r's entries are
 * indptr[r] .. indptr[r+1]-1 of fields[], features[] and values[], as in a
 * libffm line "label field:feature:value ...".
 *
 * Threads: an open model is read-only.  Any number of threads may call
 * fms_score / fms_score_raw on the same model at once; the library keeps
 * no global state.  fms_close must not run while another thread scores.
 */
#ifndef FMSCORE_H
#define FMSCORE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The version of this C interface (the functions and structs below).  A
 * file names the lowest interface version that can read it; fms_open
 * refuses a file that needs a newer one. */
#define FMS_API_VERSION 1

/* The newest inference file format this library reads: files of a newer
 * major version are refused, newer minor versions of the same major are
 * read (they only add what older readers may ignore). */
#define FMS_FORMAT_MAJOR 1
#define FMS_FORMAT_MINOR 0

/* Error codes: fms_open's err->code and fms_score's return value. */
enum {
    FMS_OK = 0,
    FMS_ERR_IO = 1,          /* the file cannot be opened or read */
    FMS_ERR_MAGIC = 2,       /* not an fmcli inference file (wrong magic bytes) */
    FMS_ERR_VERSION = 3,     /* a newer format major version, or a newer API version needed */
    FMS_ERR_TRUNCATED = 4,   /* the file is shorter than its header says */
    FMS_ERR_CHECKSUM = 5,    /* the CRC-32 does not match: the file is corrupt */
    FMS_ERR_FORMAT = 6,      /* inconsistent header, array table or values */
    FMS_ERR_NOMEM = 7,       /* out of memory */
    FMS_ERR_ARGUMENT = 8,    /* fms_score: a NULL pointer or decreasing indptr */
    FMS_ERR_NONFINITE = 9    /* fms_score: a row scored NaN or infinite (weights overflow on its values) */
};

/* Model kinds (fmcli's registry codes) and tasks. */
enum { FMS_LR = 0, FMS_FM = 1, FMS_FFM = 2, FMS_FWFM = 3, FMS_FMFM = 4 };
enum { FMS_BINARY = 0, FMS_REGRESSION = 1, FMS_MULTICLASS = 2 };

typedef struct fms_error {
    int code;                /* FMS_OK or FMS_ERR_* */
    char message[256];       /* one line naming the file and the problem */
} fms_error;

/* What a model is (fms_model_info). */
typedef struct fms_info {
    int kind;                /* FMS_LR .. FMS_FMFM */
    int task;                /* FMS_BINARY, FMS_REGRESSION or FMS_MULTICLASS */
    int n_classes;           /* 1, or the number of classes of a multiclass model */
    int k;                   /* factor width (LR: as trained, unused) */
    int64_t n_features;      /* feature slots with weights */
    int64_t n_fields;        /* fields with weights (FFM, FwFM, FmFM) */
    int use_bias, use_linear, normalize;
    int has_id_map;          /* feature ids are looked up in the model's id map */
    int format_major, format_minor;
    int dtype;               /* storage in the file: 0 float32, 1 float16, 2 int8 factors */
    uint32_t source_crc;     /* CRC-32 of the .fm model file it was converted from (0: unknown) */
} fms_info;

typedef struct fms_model fms_model;

/* The API version of the library linked in (FMS_API_VERSION when built). */
int fms_api_version(void);

/* Open and validate an inference file: magic, versions, sizes against the
 * file's length, CRC-32, the header's consistency and that every weight is
 * finite.  Returns NULL on failure, with the reason in *err (err may be
 * NULL).  The weights are held in memory as float32 (float16 and int8
 * files are widened once here). */
fms_model *fms_open(const char *path, fms_error *err);

/* The same for a file's bytes already in memory (copied; `data` may be
 * freed afterwards). */
fms_model *fms_open_memory(const void *data, size_t size, fms_error *err);

void fms_close(fms_model *model);

const fms_info *fms_model_info(const fms_model *model);

/* Values written per row: n_classes for a multiclass model, else 1. */
int fms_outputs(const fms_model *model);

/* Score n_rows rows into out (fms_outputs(model) doubles per row): what
 * `fm predict` prints -- the positive class's probability (binary), the
 * value (regression) or the class probabilities in the model's class order
 * (multiclass, a softmax of the raw scores).
 *
 * fields may be NULL for LR and FM (which do not read fields); values may
 * be NULL when every value is 1.  Feature ids are the ids of the data (a
 * model with an id map looks them up).  An entry whose feature is not one
 * of the model's (id < 0, >= n_features, or absent from the id map) or,
 * for FFM, FwFM and FmFM, whose field is < 0 or >= n_fields adds nothing
 * to the score -- but its value still counts in the row's instance
 * normalisation -- exactly as fm predict ignores it.
 *
 * Returns FMS_OK; FMS_ERR_ARGUMENT for a NULL model, indptr or out, NULL
 * features (or fields, for a kind that reads them) when there are entries,
 * or an indptr that is negative or decreases (out is then untouched);
 * FMS_ERR_NOMEM; FMS_ERR_NONFINITE when a row scored NaN or an infinity (out
 * is filled; such rows hold the non-finite value, or its probability). */
int fms_score(const fms_model *model, size_t n_rows, const int64_t *indptr, const int32_t *fields,
              const int32_t *features, const float *values, double *out);

/* The same, writing raw scores (logits; the value for regression). */
int fms_score_raw(const fms_model *model, size_t n_rows, const int64_t *indptr, const int32_t *fields,
                  const int32_t *features, const float *values, double *out);

/* A short description of an error code. */
const char *fms_strerror(int code);

#ifdef __cplusplus
}
#endif

#endif /* FMSCORE_H */
