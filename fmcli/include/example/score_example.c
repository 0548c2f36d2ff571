/* score_example: score a libffm (or libsvm) text file with an inference
 * file, printing one line per row as `fm predict` does.
 *
 *     fm convert ctr.fm --to inference -o ctr.fmi
 *     INC=$(python -m fmcli.inference --include-dir)
 *     cc -O2 -std=c99 -I"$INC" "$INC/example/score_example.c" "$INC/fmscore.c" -lm -o score_example
 *     ./score_example ctr.fmi test.ffm > p.txt
 *
 * Usage: score_example MODEL.fmi DATA [DIGITS]
 *
 * DATA is libffm text ("label field:feature:value ...") or libsvm text
 * ("label feature:value ...", field 0); '-' reads stdin.  The label is
 * skipped, and so are blank lines.  Each line printed is the probability (binary), the value
 * (regression) or the class probabilities separated by spaces
 * (multiclass), with DIGITS significant digits (default 6, fm predict's
 * output; 17 shows every digit of the double).
 *
 * Exit status: 0, 2 for a usage error, 65 for a malformed line or a
 * non-finite score, 66 for a model that cannot be opened.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fmscore.h"

#define BLOCK_ROWS 4096

/* A block of parsed rows in the scorer's CSR form. */
typedef struct {
    size_t rows, entries, cap_rows, cap_entries;
    int64_t *indptr;
    int32_t *fields, *features;
    float *values;
    long lines[BLOCK_ROWS];      /* the line number of each row */
} rows_t;

static int grow(void **p, size_t *cap, size_t need, size_t size) {
    size_t n = *cap ? *cap : 1024;
    void *q;
    if (need <= *cap) return 1;
    while (n < need) n *= 2;
    q = realloc(*p, n * size);
    if (q == NULL) return 0;
    *p = q;
    *cap = n;
    return 1;
}

static int add_entry(rows_t *b, long field, long feature, float value) {
    size_t cap = b->cap_entries;
    if (!grow((void **)&b->fields, &cap, b->entries + 1, sizeof(int32_t))) return 0;
    cap = b->cap_entries;
    if (!grow((void **)&b->features, &cap, b->entries + 1, sizeof(int32_t))) return 0;
    cap = b->cap_entries;
    if (!grow((void **)&b->values, &cap, b->entries + 1, sizeof(float))) return 0;
    b->cap_entries = cap;
    b->fields[b->entries] = (int32_t)field;
    b->features[b->entries] = (int32_t)feature;
    b->values[b->entries] = value;
    b->entries++;
    return 1;
}

/* Parse one line's entries into b as a row; returns 1, 2 for a blank line
 * (skipped, as fm predict skips it), or 0 with *why set when malformed. */
static int parse_line(char *line, rows_t *b, const char **why) {
    char *p = line, *end;
    p += strspn(p, " \t\r\n");
    if (*p == '\0') return 2;
    p += strcspn(p, " \t\r\n");   /* the label */
    for (;;) {
        long a, c = -1;
        float v;
        p += strspn(p, " \t\r\n");
        if (*p == '\0') break;
        errno = 0;
        a = strtol(p, &end, 10);
        if (end == p || *end != ':' || errno || a < 0 || a > 2147483647L) {
            *why = "expected field:feature:value or feature:value";
            return 0;
        }
        p = end + 1;
        errno = 0;
        v = strtof(p, &end);     /* feature:value (libsvm) or field:feature:value */
        if (*end == ':') {
            c = strtol(p, &end, 10);
            if (end == p || *end != ':' || errno || c < 0 || c > 2147483647L) {
                *why = "bad feature id";
                return 0;
            }
            p = end + 1;
            v = strtof(p, &end);
        }
        if (end == p || errno == ERANGE || (*end != '\0' && strchr(" \t\r\n", *end) == NULL)) {
            *why = "bad value";
            return 0;
        }
        p = end;
        if (!(c < 0 ? add_entry(b, 0, a, v) : add_entry(b, a, c, v))) {
            *why = "out of memory";
            return 0;
        }
    }
    b->indptr[++b->rows] = (int64_t)b->entries;
    return 1;
}

/* Score and print the block's rows; returns 0 after reporting a failure. */
static int flush(const fms_model *m, rows_t *b, double *out, int digits, const char *name) {
    const int C = fms_outputs(m);
    int rc = fms_score(m, b->rows, b->indptr, b->fields, b->features, b->values, out);
    if (rc == FMS_ERR_NONFINITE) {
        /* which row: its raw score is the non-finite one */
        fms_score_raw(m, b->rows, b->indptr, b->fields, b->features, b->values, out);
        for (size_t r = 0; r < b->rows * (size_t)C; r++)
            if (out[r] != out[r] || out[r] - out[r] != 0) {
                fprintf(stderr, "%s:%ld: the row scores a non-finite number\n", name, b->lines[r / (size_t)C]);
                return 0;
            }
    }
    if (rc != FMS_OK) {
        fprintf(stderr, "%s: %s\n", name, fms_strerror(rc));
        return 0;
    }
    for (size_t r = 0; r < b->rows; r++)
        for (int c = 0; c < C; c++)
            printf("%.*g%c", digits, out[r * (size_t)C + (size_t)c], c + 1 < C ? ' ' : '\n');
    b->rows = b->entries = 0;
    return 1;
}

int main(int argc, char **argv) {
    fms_error err;
    fms_model *m;
    FILE *in;
    rows_t b;
    char *line = NULL;
    size_t cap = 0;
    long lineno = 0;
    int digits = 6, status = 0;
    double *out;
    const char *name;

    if (argc < 3 || argc > 4 || (argc == 4 && ((digits = atoi(argv[3])) < 1 || digits > 17))) {
        fprintf(stderr, "usage: %s MODEL.fmi DATA [DIGITS 1..17]\n", argv[0]);
        return 2;
    }
    m = fms_open(argv[1], &err);
    if (m == NULL) {
        fprintf(stderr, "%s\n", err.message);
        return 66;
    }
    name = strcmp(argv[2], "-") == 0 ? "<stdin>" : argv[2];
    in = strcmp(argv[2], "-") == 0 ? stdin : fopen(argv[2], "r");
    if (in == NULL) {
        fprintf(stderr, "%s: cannot open the file\n", argv[2]);
        fms_close(m);
        return 66;
    }
    memset(&b, 0, sizeof b);
    b.indptr = (int64_t *)malloc((BLOCK_ROWS + 1) * sizeof(int64_t));
    out = (double *)malloc((size_t)BLOCK_ROWS * (size_t)fms_outputs(m) * sizeof(double));
    if (b.indptr == NULL || out == NULL) {
        fprintf(stderr, "out of memory\n");
        return 70;
    }
    b.indptr[0] = 0;
    for (;;) {
        /* read one whole line, however long */
        size_t len = 0;
        int got = 0;
        const char *why = NULL;
        for (;;) {
            if (cap - len < 2 && !grow((void **)&line, &cap, len + 4096, 1)) {
                fprintf(stderr, "out of memory\n");
                return 70;
            }
            if (fgets(line + len, (int)(cap - len), in) == NULL) break;
            got = 1;
            len += strlen(line + len);
            if (len && line[len - 1] == '\n') break;
        }
        if (!got) break;
        lineno++;
        b.lines[b.rows] = lineno;
        if (!parse_line(line, &b, &why)) {
            fprintf(stderr, "%s:%ld: %s\n", name, lineno, why);
            status = 65;
            break;
        }
        if (b.rows == BLOCK_ROWS && !flush(m, &b, out, digits, name)) {
            status = 65;
            break;
        }
    }
    if (status == 0 && b.rows && !flush(m, &b, out, digits, name)) status = 65;
    if (in != stdin) fclose(in);
    free(line);
    free(b.indptr);
    free(b.fields);
    free(b.features);
    free(b.values);
    free(out);
    fms_close(m);
    return status;
}
