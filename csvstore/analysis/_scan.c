/* csvstore.analysis._scan: the profiler's record counter, one pass in C.
 *
 * Counts what `_RecordScanner` (csvstore/analysis/scanner.py) counts, with the same reading
 * of the bytes as csv.reader over open(..., newline=""): CR, LF and CRLF end a record outside
 * quotes; a quote opens a quoted field only where a field starts; "" inside a quoted field
 * is one quote; records with no bytes at all are blank and not counted. The Python counter
 * stays the reference and the fallback; tests/test_profiling.py runs every property test
 * against both. Why C: the Python counter holds the GIL (costs: bench/RESULTS.md); this
 * loop lets go of it.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

/* Below this many bytes releasing the GIL costs more than it frees. */
#define RELEASE_GIL_FROM 65536
/* Starts of the last records, for the footer check (a power of two). */
#define RECENT 32

enum { ORDINARY = 0, DELIM, CR, LF, QUOTE };

typedef struct {
    long long index;
    long long offset;
} Checkpoint;

typedef struct {
    PyObject_HEAD
    unsigned char classes[256];
    unsigned char delim;
    unsigned char quote;
    long long expected;  /* delimiters per record; -1 until known */
    long long header_records;
    long long every;
    long long next_checkpoint; /* the next data row index that gets a checkpoint */
    long long pos;       /* offset of the next byte fed */
    /* state carried from one chunk to the next */
    int in_quote;
    int quote_pending;   /* in a quoted field and the last byte was a quote */
    int cr_pending;      /* the last byte was a CR ending a record */
    int field_start;     /* the next byte starts a field */
    /* the record being read */
    long long rec_delims;
    int rec_nonempty;
    long long rec_start;
    /* totals */
    long long records;   /* non-blank records, header included */
    long long ragged;
    long long recent[RECENT]; /* record i starts at recent[i % RECENT] */
    Checkpoint *checkpoints;
    Py_ssize_t n_checkpoints;
    Py_ssize_t cap_checkpoints;
    int busy;            /* a feed is running (without the GIL) */
    int failed;          /* out of memory for checkpoints */
} Scanner;

static int
add_checkpoint(Scanner *self, long long index, long long offset)
{
    if (self->n_checkpoints == self->cap_checkpoints) {
        Py_ssize_t cap = self->cap_checkpoints ? self->cap_checkpoints * 2 : 16;
        if (cap > PY_SSIZE_T_MAX / (Py_ssize_t)sizeof(Checkpoint) / 2) {
            self->failed = 1;
            return -1;
        }
        Checkpoint *grown = realloc(self->checkpoints, (size_t)cap * sizeof(Checkpoint));
        if (grown == NULL) {
            self->failed = 1;
            return -1;
        }
        self->checkpoints = grown;
        self->cap_checkpoints = cap;
    }
    self->checkpoints[self->n_checkpoints].index = index;
    self->checkpoints[self->n_checkpoints].offset = offset;
    self->n_checkpoints++;
    return 0;
}

static inline void
end_record(Scanner *self, int nonempty, long long next_start)
{
    if (nonempty) {
        long long index = self->records - self->header_records;
        if (index >= 0) {
            if (self->expected < 0)
                self->expected = self->rec_delims;
            else if (self->rec_delims != self->expected)
                self->ragged++;
            if (index == self->next_checkpoint) { /* a counter, not a division per row */
                add_checkpoint(self, index, self->rec_start);
                self->next_checkpoint += self->every;
            }
        }
        self->recent[self->records & (RECENT - 1)] = self->rec_start;
        self->records++;
    }
    self->rec_delims = 0;
    self->rec_nonempty = 0;
    self->rec_start = next_start;
}

/* Byte by byte over data[p:stop) (p, stop: indexes into data); any state, any bytes.
 * The state lives in locals here (the compiler cannot keep fields of `self` in registers
 * across reads of `data`, which may alias them) and goes back to `self` at the end and
 * whenever a record ends. */
/* feed() lets go of the GIL while it counts: anything else called meanwhile (from another
 * thread) would read or free what the count is changing, so it is refused. */
static int
refuse_if_busy(Scanner *self)
{
    if (self->busy) {
        PyErr_SetString(PyExc_RuntimeError, "the scanner is in use by a feed() in another thread");
        return -1;
    }
    return 0;
}

static void
scan_bytes(Scanner *self, const unsigned char *data, Py_ssize_t p, Py_ssize_t stop)
{
    const unsigned char *classes = self->classes;
    const unsigned char quote = self->quote;
    const long long base = self->pos;
    int in_quote = self->in_quote, quote_pending = self->quote_pending;
    int cr_pending = self->cr_pending, field_start = self->field_start;
    int rec_nonempty = self->rec_nonempty;
    long long rec_delims = self->rec_delims;

    while (p < stop) {
        unsigned char c = data[p];
        if (in_quote) {
            if (!quote_pending) {
                const unsigned char *found = memchr(data + p, quote, (size_t)(stop - p));
                if (found == NULL)
                    break;
                quote_pending = 1;
                p = found - data + 1;
                continue;
            }
            quote_pending = 0;
            if (c == quote) { /* "" : an escaped quote, still inside */
                p++;
                continue;
            }
            in_quote = 0; /* the quote closed the field; c is outside */
            field_start = 0;
        }
        if (cr_pending) {
            cr_pending = 0;
            if (c == '\n') { /* second half of a CRLF */
                p++;
                self->rec_start = base + p;
                continue;
            }
        }
        switch (classes[c]) {
        case ORDINARY: /* and the ones after it, at once */
            p++;
            while (p < stop && classes[data[p]] == ORDINARY)
                p++;
            rec_nonempty = 1;
            field_start = 0;
            continue;
        case DELIM:
            rec_delims++;
            rec_nonempty = 1;
            field_start = 1;
            break;
        case CR:
        case LF:
            self->rec_delims = rec_delims;
            end_record(self, rec_nonempty, base + p + 1);
            rec_delims = 0;
            rec_nonempty = 0;
            cr_pending = classes[c] == CR;
            field_start = 1;
            break;
        case QUOTE:
            rec_nonempty = 1;
            if (field_start) {
                in_quote = 1;
                field_start = 0;
            }
            /* elsewhere a quote is an ordinary character of an unquoted field */
            break;
        }
        p++;
    }
    self->in_quote = in_quote;
    self->quote_pending = quote_pending;
    self->cr_pending = cr_pending;
    self->field_start = field_start;
    self->rec_nonempty = rec_nonempty;
    self->rec_delims = rec_delims;
}

#if defined(__SSE2__)
#include <emmintrin.h>
#include <stdint.h>

/* One bit per byte of data[p:p+64] that equals `byte`. */
static inline uint64_t
bits_equal(const __m128i chunk[4], __m128i byte)
{
    uint64_t bits = 0;
    for (int i = 0; i < 4; i++)
        bits |= (uint64_t)(uint16_t)_mm_movemask_epi8(_mm_cmpeq_epi8(chunk[i], byte)) << (16 * i);
    return bits;
}

/* Without -mpopcnt the builtin is a call into libgcc per record (bench/RESULTS.md). */
static inline int
popcount64(uint64_t x)
{
#if defined(__POPCNT__)
    return __builtin_popcountll(x);
#else
    x = x - ((x >> 1) & 0x5555555555555555ULL);
    x = (x & 0x3333333333333333ULL) + ((x >> 2) & 0x3333333333333333ULL);
    x = (x + (x >> 4)) & 0x0F0F0F0F0F0F0F0FULL;
    return (int)((x * 0x0101010101010101ULL) >> 56);
#endif
}

/* data[p:p+64] outside quotes with no quote and no CR in it: only delimiters and LFs to
 * count, located 64 at a time with SSE2 compares instead of one branch per byte. */
static void
scan_plain64(Scanner *self, uint64_t delims, uint64_t lfs, Py_ssize_t p)
{
    const long long base = self->pos + p;
    int from = 0; /* first byte of the current segment within the 64 */
    while (lfs) {
        int at = __builtin_ctzll(lfs);
        uint64_t below = (at == 0) ? 0 : (~0ULL >> (64 - at));
        uint64_t segment = below & (~0ULL << from);
        self->rec_delims += popcount64(delims & segment);
        end_record(self, self->rec_nonempty || at > from, base + at + 1);
        from = at + 1;
        lfs &= lfs - 1;
    }
    if (from < 64) {
        self->rec_delims += popcount64(delims >> from);
        self->rec_nonempty = 1;
        self->field_start = (int)(delims >> 63);
    } else {
        self->field_start = 1;
    }
}
#endif

/* The whole state machine; called with or without the GIL (it touches no Python object). */
static void
scan(Scanner *self, const unsigned char *data, Py_ssize_t n)
{
    Py_ssize_t p = 0;
#if defined(__SSE2__)
    const __m128i delim = _mm_set1_epi8((char)self->delim);
    const __m128i quote = _mm_set1_epi8((char)self->quote);
    const __m128i cr = _mm_set1_epi8('\r');
    const __m128i lf = _mm_set1_epi8('\n');
#endif
    while (p < n) {
        if (self->in_quote && !self->quote_pending) {
            /* inside a quoted field only a quote matters: jump to the next one */
            const unsigned char *found = memchr(data + p, self->quote, (size_t)(n - p));
            if (found == NULL)
                break;
            self->quote_pending = 1;
            p = found - data + 1;
            continue;
        }
#if defined(__SSE2__)
        if (!self->in_quote && !self->cr_pending && n - p >= 64) {
            __m128i chunk[4];
            for (int i = 0; i < 4; i++)
                chunk[i] = _mm_loadu_si128((const __m128i *)(data + p + 16 * i));
            if ((bits_equal(chunk, quote) | bits_equal(chunk, cr)) == 0) {
                scan_plain64(self, bits_equal(chunk, delim), bits_equal(chunk, lf), p);
                p += 64;
                continue;
            }
        }
#endif
        Py_ssize_t stop = (n - p > 64) ? p + 64 : n;
        scan_bytes(self, data, p, stop);
        p = stop;
    }
    self->pos += n;
}

static int
Scanner_init(Scanner *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"delimiter", "quotechar", "expected_fields", "header_records",
                             "checkpoint_every", NULL};
    int delimiter, quotechar;
    PyObject *expected = Py_None;
    long long header_records, every;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "$iiOLL", kwlist, &delimiter, &quotechar,
                                     &expected, &header_records, &every))
        return -1;
    if (refuse_if_busy(self) < 0)
        return -1;
    if (delimiter < 0 || delimiter > 255 || quotechar < 0 || quotechar > 255 ||
        delimiter == quotechar || delimiter == '\r' || delimiter == '\n' ||
        quotechar == '\r' || quotechar == '\n') {
        PyErr_SetString(PyExc_ValueError, "delimiter and quotechar: two distinct bytes, not CR or LF");
        return -1;
    }
    if (every < 1 || header_records < 0) {
        PyErr_SetString(PyExc_ValueError, "checkpoint_every must be positive, header_records >= 0");
        return -1;
    }
    self->expected = -1;
    if (expected != Py_None) {
        long long fields = PyLong_AsLongLong(expected);
        if (fields == -1 && PyErr_Occurred())
            return -1;
        if (fields < 1) {
            PyErr_SetString(PyExc_ValueError, "expected_fields must be positive or None");
            return -1;
        }
        self->expected = fields - 1;
    }
    memset(self->classes, ORDINARY, sizeof self->classes);
    self->classes[(unsigned char)delimiter] = DELIM;
    self->classes['\r'] = CR;
    self->classes['\n'] = LF;
    self->classes[(unsigned char)quotechar] = QUOTE;
    self->delim = (unsigned char)delimiter;
    self->quote = (unsigned char)quotechar;
    self->header_records = header_records;
    self->every = every;
    self->next_checkpoint = 0;
    self->pos = 0;
    self->in_quote = self->quote_pending = self->cr_pending = 0;
    self->field_start = 1;
    self->rec_delims = 0;
    self->rec_nonempty = 0;
    self->rec_start = 0;
    self->records = self->ragged = 0;
    free(self->checkpoints);
    self->checkpoints = NULL;
    self->n_checkpoints = self->cap_checkpoints = 0;
    self->busy = self->failed = 0;
    return 0;
}

static void
Scanner_dealloc(Scanner *self)
{
    free(self->checkpoints);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
Scanner_feed(Scanner *self, PyObject *arg)
{
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    if (refuse_if_busy(self) < 0) {
        PyBuffer_Release(&view);
        return NULL;
    }
    self->busy = 1;
    if (view.len >= RELEASE_GIL_FROM) {
        Py_BEGIN_ALLOW_THREADS
        scan(self, (const unsigned char *)view.buf, view.len);
        Py_END_ALLOW_THREADS
    } else {
        scan(self, (const unsigned char *)view.buf, view.len);
    }
    self->busy = 0;
    PyBuffer_Release(&view);
    if (self->failed)
        return PyErr_NoMemory();
    Py_RETURN_NONE;
}

static PyObject *
Scanner_finish(Scanner *self, PyObject *Py_UNUSED(ignored))
{
    if (refuse_if_busy(self) < 0)
        return NULL;
    /* A quote as the very last byte closes its field; an unterminated quoted field at the
     * end still makes a record, as csv.reader does. */
    self->quote_pending = 0;
    if (self->rec_nonempty || self->in_quote)
        end_record(self, 1, self->pos);
    self->in_quote = 0;
    if (self->failed)
        return PyErr_NoMemory();
    Py_RETURN_NONE;
}

static PyObject *
Scanner_data_rows(Scanner *self, void *Py_UNUSED(closure))
{
    if (refuse_if_busy(self) < 0)
        return NULL;
    long long rows = self->records - self->header_records;
    return PyLong_FromLongLong(rows > 0 ? rows : 0);
}

static PyObject *
Scanner_ragged(Scanner *self, void *Py_UNUSED(closure))
{
    if (refuse_if_busy(self) < 0)
        return NULL;
    return PyLong_FromLongLong(self->ragged);
}

static PyObject *
Scanner_expected_fields(Scanner *self, void *Py_UNUSED(closure))
{
    if (refuse_if_busy(self) < 0)
        return NULL;
    if (self->expected < 0)
        Py_RETURN_NONE;
    return PyLong_FromLongLong(self->expected + 1);
}

static PyObject *
Scanner_checkpoints(Scanner *self, void *Py_UNUSED(closure))
{
    if (refuse_if_busy(self) < 0)
        return NULL;
    PyObject *list = PyList_New(self->n_checkpoints);
    if (list == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < self->n_checkpoints; i++) {
        PyObject *pair = Py_BuildValue("(LL)", self->checkpoints[i].index,
                                       self->checkpoints[i].offset);
        if (pair == NULL) {
            Py_DECREF(list);
            return NULL;
        }
        PyList_SET_ITEM(list, i, pair);
    }
    return list;
}

static PyObject *
Scanner_recent_starts(Scanner *self, void *Py_UNUSED(closure))
{
    if (refuse_if_busy(self) < 0)
        return NULL;
    long long n = self->records < RECENT ? self->records : RECENT;
    PyObject *list = PyList_New((Py_ssize_t)n);
    if (list == NULL)
        return NULL;
    for (long long i = 0; i < n; i++) {
        long long record = self->records - n + i;
        PyObject *start = PyLong_FromLongLong(self->recent[record & (RECENT - 1)]);
        if (start == NULL) {
            Py_DECREF(list);
            return NULL;
        }
        PyList_SET_ITEM(list, (Py_ssize_t)i, start);
    }
    return list;
}

static PyMethodDef Scanner_methods[] = {
    {"feed", (PyCFunction)Scanner_feed, METH_O, "Count the next bytes (any length)."},
    {"finish", (PyCFunction)Scanner_finish, METH_NOARGS, "The end of the file: close the last record."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Scanner_getset[] = {
    {"data_rows", (getter)Scanner_data_rows, NULL, "Non-blank records after the header.", NULL},
    {"ragged", (getter)Scanner_ragged, NULL, "Data records whose width is not the expected one.", NULL},
    {"expected_fields", (getter)Scanner_expected_fields, NULL, "The expected width, or None.", NULL},
    {"checkpoints", (getter)Scanner_checkpoints, NULL, "(data row, offset) pairs.", NULL},
    {"recent_starts", (getter)Scanner_recent_starts, NULL,
     "Offsets of the last records (at most 32, header included), oldest first.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject ScannerType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "csvstore.analysis._scan.Scanner",
    .tp_doc = "Counts the records and fields of CSV bytes whose dialect is known.",
    .tp_basicsize = sizeof(Scanner),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Scanner_init,
    .tp_dealloc = (destructor)Scanner_dealloc,
    .tp_methods = Scanner_methods,
    .tp_getset = Scanner_getset,
};

static struct PyModuleDef scan_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "csvstore.analysis._scan",
    .m_doc = "The CSV record counter of csvstore.analysis, in C.",
    .m_size = -1,
};

PyMODINIT_FUNC
PyInit__scan(void)
{
    if (PyType_Ready(&ScannerType) < 0)
        return NULL;
    PyObject *module = PyModule_Create(&scan_module);
    if (module == NULL)
        return NULL;
    Py_INCREF(&ScannerType);
    if (PyModule_AddObject(module, "Scanner", (PyObject *)&ScannerType) < 0) {
        Py_DECREF(&ScannerType);
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
