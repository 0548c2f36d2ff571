# Tokenizer for libffm and libsvm text, run without the GIL over a byte block.
#
#   libffm:  label field:feature:value field:feature:value ...
#   libsvm:  label feature:value feature:value ...   (qid:N tokens are skipped)
#
# The label token may carry a row weight, LABEL:WEIGHT (a number >= 0).  In
# the "class" label mode the label is any text without ':' or control bytes
# (a class name); its byte span is recorded and mapped to a class by the
# caller.
#
# Tokens are separated by spaces or tabs; lines end with LF or CRLF; blank
# lines and '#' comments (to the end of the line) are ignored.  The caller
# hands over whole lines only (it carries a partial last line over to the
# next block) and sizes the output arrays from cheap upper bounds.  On the
# first malformed token parsing stops and the error code, the line index
# within the block and the token's byte span are returned, so the caller
# can report FILE:LINE with the offending text.

from libc.string cimport memchr
from libc.stdint cimport uint32_t, uint64_t

cdef extern from "digits.h" nogil:
    int fm_leading_digits8(const unsigned char* p)
    uint32_t fm_digits_value(const unsigned char* p, int n)

cdef enum:
    FMT_LIBFFM = 0
    FMT_LIBSVM = 1

cdef enum:
    LABEL_BINARY = 0     # 0/1 or -1/+1
    LABEL_REAL = 1       # any finite number
    LABEL_CLASS = 2      # a class name: any token, recorded as a byte span

cdef enum:
    OK = 0
    E_LABEL = 1          # label is not a number
    E_LABEL_VALUE = 2    # binary label other than 0, 1, -1
    E_TOKEN = 3          # token is not field:feature:value / feature:value
    E_NEG_ID = 4         # negative field or feature id
    E_BIG_ID = 5         # id above 2^31 - 1
    E_VALUE = 6          # value is not a number
    E_NONFINITE = 7      # value or label is NaN / inf / overflows
    E_CAPACITY = 8       # output arrays too small (caller bug)
    E_LONG_LINE = 9      # line longer than max_line bytes
    E_CR = 10            # carriage return not followed by a line feed
    E_MIXED_LABELS = 11  # binary labels use both 0 and -1 for the negative class
    E_FEATURE_LIMIT = 12 # feature id above max_feature
    E_WEIGHT = 13        # row weight after 'LABEL:' is not a number
    E_WEIGHT_NEG = 14    # row weight below 0
    E_WEIGHT_RANGE = 15  # row weight is inf / overflows float32
    E_CLASS = 16         # class label empty, with a control byte, or ':' without weights

FORMATS = {"libffm": FMT_LIBFFM, "libsvm": FMT_LIBSVM}
LABEL_MODES = {"binary": LABEL_BINARY, "real": LABEL_REAL, "class": LABEL_CLASS}

cdef double[23] POW10 = [1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11,
                         1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22]

cdef enum:
    MAX_ID = 2147483647


cdef inline bint is_sep(unsigned char c) noexcept nogil:
    return c == 32 or c == 9          # space, tab


cdef inline bint is_digit(unsigned char c) noexcept nogil:
    return 48 <= c <= 57


cdef inline double scale10(double m, long e) noexcept nogil:
    """m * 10^e, exact when m < 2^53 and |e| <= 22 (Clinger's fast path)."""
    while e > 22:
        m *= 1e22
        e -= 22
        if m > 1.8e308:
            return m
    while e < -22:
        m /= 1e22
        e += 22
        if m == 0:
            return m
    if e >= 0:
        return m * POW10[e]
    return m / POW10[-e]


cdef inline int parse_number(const unsigned char* p, const unsigned char* end,
                             double* out, const unsigned char** nxt) noexcept nogil:
    """Decimal number: [+-]digits[.digits][(e|E)[+-]digits].  Returns 0 or -1.

    Hex floats, 'nan', 'inf' and anything else are rejected (-1).  Values too
    large for a double come back as +-inf for the caller to reject."""
    cdef bint neg = False, any_digit = False, eneg = False
    cdef uint64_t mant = 0
    cdef int sig = 0
    cdef long exp10 = 0, e = 0
    cdef unsigned char c
    if p < end and (p[0] == 45 or p[0] == 43):        # '-' '+'
        neg = p[0] == 45
        p += 1
    while p < end and is_digit(p[0]):
        any_digit = True
        if sig < 19:
            mant = mant * 10 + (p[0] - 48)
            if mant:
                sig += 1
        else:
            exp10 += 1
        p += 1
    if p < end and p[0] == 46:                       # '.'
        p += 1
        while p < end and is_digit(p[0]):
            any_digit = True
            if sig < 19:
                mant = mant * 10 + (p[0] - 48)
                if mant:
                    sig += 1
                exp10 -= 1
            p += 1
    if not any_digit:
        return -1
    if p < end and (p[0] == 101 or p[0] == 69):      # 'e' 'E'
        p += 1
        if p < end and (p[0] == 45 or p[0] == 43):
            eneg = p[0] == 45
            p += 1
        if p >= end or not is_digit(p[0]):
            return -1
        while p < end and is_digit(p[0]):
            if e < 100000:
                e = e * 10 + (p[0] - 48)
            p += 1
        exp10 += -e if eneg else e
    out[0] = -scale10(<double>mant, exp10) if neg else scale10(<double>mant, exp10)
    nxt[0] = p
    return 0


cdef inline int parse_id(const unsigned char* p, const unsigned char* end, const unsigned char* limit,
                         int* out, const unsigned char** nxt) noexcept nogil:
    """Non-negative decimal id below 2^31.  Returns OK, E_TOKEN, E_NEG_ID or E_BIG_ID.

    `limit` is the end of the readable bytes (end, or beyond it when the
    byte at `end` is no digit): an id of one to seven digits with eight
    readable bytes from its start is read as a word (digits.h)."""
    cdef long long v = 0
    cdef bint big = False
    cdef int nd
    if limit - p >= 8:
        nd = fm_leading_digits8(p)
        if 0 < nd < 8:      # below 10^7: no overflow
            out[0] = <int>fm_digits_value(p, nd)
            nxt[0] = p + nd
            return OK
    if p < end and p[0] == 45:
        return E_NEG_ID
    if p >= end or not is_digit(p[0]):
        return E_TOKEN
    while p < end and is_digit(p[0]):
        v = v * 10 + (p[0] - 48)
        if v > MAX_ID:
            big = True
            v = MAX_ID
        p += 1
    if big:
        return E_BIG_ID
    out[0] = <int>v
    nxt[0] = p
    return OK


cdef inline bint at_token_end(const unsigned char* p, const unsigned char* end) noexcept nogil:
    return p >= end or is_sep(p[0])


def parse_block(const unsigned char[::1] buf, str fmt, str label_mode,
                float[::1] labels, long long[::1] indptr, int[::1] fields,
                int[::1] features, float[::1] values, long long[::1] row_lines=None,
                long long max_line=0, long long max_feature=MAX_ID, int negative=0,
                float[::1] weights=None, long long[::1] label_spans=None):
    """Parse whole lines in `buf` into the output arrays.

    indptr[0] must hold the nnz offset to start from (normally 0); row r's
    entries end at indptr[r + 1], and row_lines[r] (when given) receives the
    0-based index of its line in `buf`.  max_line > 0 limits a line's length
    in bytes; feature ids above max_feature are errors.  `negative` carries
    which negative label binary data has used so far (0 none yet, 1 "0",
    2 "-1") from block to block: mixing them is an error.

    With `weights` (as long as labels) a label token may be LABEL:WEIGHT and
    weights[r] receives the row's weight, 1.0 when it has none; without it a
    ':' in the label token is an error.  In the "class" label mode the label
    is not parsed: label_spans (at least 2 * len(labels) long) receives the
    byte offset within `buf` and the length of row r's label (without the
    weight) at [2r] and [2r + 1], and labels[r] is set to 0.

    Returns (rows, nnz, lines, error, err_line, err_start, err_end, negative,
    weighted): lines is the number of lines consumed (the 0-based index of
    the bad line when error != 0), err_start:err_end the bad token, and on
    error nnz may include entries of the unfinished row (indptr[rows] is
    where it began).  weighted is True when some label token carried a
    weight (including one of the unfinished row)."""
    cdef int f = FORMATS[fmt]
    cdef int lm = LABEL_MODES[label_mode]
    cdef Py_ssize_t n = buf.shape[0]
    cdef Py_ssize_t cap_rows = labels.shape[0]
    cdef Py_ssize_t cap_nnz = fields.shape[0]
    cdef Py_ssize_t rows = 0, nnz = indptr[0], line = 0
    cdef int err = OK, rc, fid = 0, jid = 0, row_negative = 0
    cdef double v, lab = 0, wd
    cdef float fv, wf
    cdef const unsigned char* base
    cdef const unsigned char* p
    cdef const unsigned char* lend
    cdef const unsigned char* eol
    cdef const unsigned char* hash_
    cdef const unsigned char* end
    cdef const unsigned char* tok = NULL
    cdef const unsigned char* q
    cdef bint keep_lines = row_lines is not None
    cdef bint keep_weights = weights is not None
    cdef bint weighted = False
    cdef const unsigned char* cr
    if keep_lines and row_lines.shape[0] < cap_rows:
        raise ValueError("row_lines is shorter than labels")
    if keep_weights and weights.shape[0] < cap_rows:
        raise ValueError("weights is shorter than labels")
    if lm == LABEL_CLASS:
        if label_spans is None:
            raise ValueError("the class label mode needs label_spans")
        if label_spans.shape[0] < 2 * cap_rows:
            raise ValueError("label_spans is shorter than twice labels")
    if n == 0:
        return 0, nnz, 0, OK, 0, 0, 0, negative, False
    base = &buf[0]
    end = base + n
    p = base
    with nogil:
        while p < end:
            eol = <const unsigned char*>memchr(p, 10, end - p)
            if eol == NULL:
                eol = end
            lend = eol
            hash_ = <const unsigned char*>memchr(p, 35, lend - p)      # '#'
            if hash_ != NULL:
                lend = hash_
            if max_line > 0 and eol - p > max_line:
                err = E_LONG_LINE
                tok = p
                break
            if lend > p and (lend - 1)[0] == 13 and hash_ == NULL:          # CR of CRLF
                lend -= 1
            cr = <const unsigned char*>memchr(p, 13, lend - p)
            if cr != NULL:
                err = E_CR
                tok = cr
                break
            while p < lend and is_sep(p[0]):
                p += 1
            if p < lend:
                if rows >= cap_rows:
                    err = E_CAPACITY
                    tok = p
                    break
                # label
                tok = p
                if lm == LABEL_CLASS:
                    q = p
                    while q < lend and not is_sep(q[0]) and q[0] != 58 and q[0] >= 32 and q[0] != 127:
                        q += 1
                    if q == p or not (at_token_end(q, lend) or (q[0] == 58 and keep_weights)):
                        err = E_CLASS
                        break
                    label_spans[2 * rows] = p - base
                    label_spans[2 * rows + 1] = q - p
                else:
                    if parse_number(p, lend, &lab, &q) != 0 or not (
                            at_token_end(q, lend) or (q[0] == 58 and keep_weights)):
                        err = E_LABEL
                        break
                    fv = <float>lab             # must stay finite as float32
                    if fv - fv != 0:
                        err = E_NONFINITE
                        break
                row_negative = 0
                if lm == LABEL_BINARY:
                    if not (lab == 1 or lab == 0 or lab == -1):
                        err = E_LABEL_VALUE
                        break
                    if lab != 1:
                        # which negative label this row uses; it counts only
                        # once the row is known to be good
                        row_negative = 1 if lab == 0 else 2
                        if negative != 0 and negative != row_negative:
                            err = E_MIXED_LABELS
                            break
                wf = 1
                if q < lend and q[0] == 58:                     # LABEL:WEIGHT
                    weighted = True
                    p = q + 1
                    if parse_number(p, lend, &wd, &q) != 0 or not at_token_end(q, lend):
                        err = E_WEIGHT
                        break
                    if wd < 0:
                        err = E_WEIGHT_NEG
                        break
                    wf = <float>wd              # must stay finite as float32
                    if wf - wf != 0:
                        err = E_WEIGHT_RANGE
                        break
                    if wf == 0:
                        wf = 0                  # no -0.0
                if keep_weights:
                    weights[rows] = wf
                labels[rows] = <float>lab
                p = q
                while True:
                    while p < lend and is_sep(p[0]):
                        p += 1
                    if p >= lend:
                        break
                    tok = p
                    if f == FMT_LIBSVM and lend - p >= 4 and p[0] == 113 and p[1] == 105 \
                            and p[2] == 100 and p[3] == 58:            # 'qid:'
                        p += 4
                        while p < lend and not is_sep(p[0]):
                            p += 1
                        continue
                    if nnz >= cap_nnz:
                        err = E_CAPACITY
                        break
                    if f == FMT_LIBFFM:
                        rc = parse_id(p, lend, end, &fid, &q)
                        if rc != OK:
                            err = rc
                            break
                        if q >= lend or q[0] != 58:
                            err = E_TOKEN
                            break
                        p = q + 1
                    else:
                        fid = 0
                    rc = parse_id(p, lend, end, &jid, &q)
                    if rc != OK:
                        err = rc
                        break
                    if jid > max_feature:
                        err = E_FEATURE_LIMIT
                        break
                    if q >= lend or q[0] != 58:
                        err = E_TOKEN
                        break
                    p = q + 1
                    if p < lend and is_digit(p[0]) and (p + 1 == lend or is_sep(p[1])):
                        fv = <float>(p[0] - 48)     # a one-digit value ("1" of one-hot data)
                        q = p + 1
                    else:
                        if parse_number(p, lend, &v, &q) != 0:
                            err = E_VALUE if (p < lend and not is_sep(p[0])) else E_TOKEN
                            break
                        if not at_token_end(q, lend):
                            err = E_VALUE if q[0] != 58 else E_TOKEN
                            break
                        fv = <float>v           # must stay finite as float32
                        if fv - fv != 0:
                            err = E_NONFINITE
                            break
                    fields[nnz] = fid
                    features[nnz] = jid
                    values[nnz] = fv
                    nnz += 1
                    p = q
                if err != OK:
                    break
                if keep_lines:
                    row_lines[rows] = line
                if row_negative != 0:
                    negative = row_negative
                rows += 1
                indptr[rows] = nnz
            line += 1
            p = eol + 1
    if err != OK:
        q = tok
        while q < end and q[0] != 10 and q[0] != 13 and not is_sep(q[0]):
            q += 1
        if err == E_CR:
            q = tok + 1
        return rows, nnz, line, err, line, tok - base, q - base, negative, weighted
    return rows, nnz, line, OK, 0, 0, 0, negative, weighted


def count_newlines(const unsigned char[::1] buf, Py_ssize_t end):
    """The line feeds among buf[:end]: bytes.count(b"\\n"), several times
    as fast and without the GIL (the text readers count the lines of blocks
    read ahead of the parser this way)."""
    cdef Py_ssize_t n = min(end, buf.shape[0]), i, j, stop
    cdef const unsigned char* p
    cdef Py_ssize_t total = 0
    cdef unsigned char part
    if n <= 0:
        return 0
    p = &buf[0]
    with nogil:
        i = 0
        while i < n:
            # a byte-wide count per stretch of 255 bytes vectorizes well
            stop = min(n, i + 255)
            part = 0
            for j in range(i, stop):
                part += p[j] == 10
            total += part
            i = stop
    return total


cdef extern from "crc32.h" nogil:
    uint32_t fm_crc32(uint32_t crc, const unsigned char* p, size_t n, int fold)
    void fm_crc_init()
    int fm_crc_fold_ok


def crc32(const unsigned char[::1] data, uint32_t value=0, bint fold=True):
    """zlib.crc32(data, value), the same value, several times as fast where
    the CPU multiplies carry-less (x86-64 with PCLMULQDQ; see crc32.h), and
    without the GIL (model files' checksums).  fold=False runs the portable
    byte-wise loop alone."""
    cdef size_t n = data.shape[0]
    cdef uint32_t c
    if n == 0:
        return value
    with nogil:
        c = fm_crc32(value, &data[0], n, fold)
    return c


def crc32_folds():
    """Whether crc32 folds with carry-less multiplies on this CPU."""
    return bool(fm_crc_fold_ok)


fm_crc_init()    # the table, and which loop this CPU runs (before any thread asks)


# ---------------------------------------------------------------------------
# the binary cache's checksum (see checksum.h)

cdef extern from "checksum.h" nogil:
    ctypedef struct fm_ck_state:
        pass
    void fm_ck_init(fm_ck_state *s, uint64_t seed)
    void fm_ck_update(fm_ck_state *s, const unsigned char *p, size_t n)
    uint64_t fm_ck_final(const fm_ck_state *s)


cdef class Checksum64:
    """A streaming 64-bit checksum (checksum.h): update() with pieces of
    bytes in order, value() for the checksum of all of them so far."""

    cdef fm_ck_state state

    def __cinit__(self, uint64_t seed=0):
        fm_ck_init(&self.state, seed)

    def update(self, const unsigned char[::1] data):
        cdef size_t n = data.shape[0]
        if n == 0:
            return
        with nogil:
            fm_ck_update(&self.state, &data[0], n)

    def value(self):
        return fm_ck_final(&self.state)


def checksum64(const unsigned char[::1] data, uint64_t seed=0):
    """The 64-bit checksum of `data` (any contiguous buffer of bytes)."""
    cdef Checksum64 c = Checksum64(seed)
    c.update(data)
    return c.value()
