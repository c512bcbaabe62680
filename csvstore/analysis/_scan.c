/* csvstore.analysis._scan: the profiler's record counter, one pass in C.
 *
 * Counts what `_RecordScanner` (csvstore/analysis/scanner.py) counts, with the same reading
 * of the bytes as csv.reader over open(..., newline=""): CR, LF and CRLF end a record outside
 * quotes; a quote opens a quoted field only where a field starts; "" inside a quoted field
 * is one quote; records with no bytes at all are blank and not counted. The Python counter
 * stays the reference and the fallback; tests/test_profiling.py runs every property test
 * against both, tests/test_record_counter.py each SIMD build. Why C: the Python counter
 * holds the GIL (costs: bench/RESULTS.md); this loop lets go of it, and reads most of a file
 * 64 bytes at a time (docs/design/profiler.md).
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
    int simd;            /* SIMD_*: the build scan_windows uses */
    long long windows;   /* 64-byte windows counted by scan_windows */
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

/* Windows: the loop over most of a file, 64 bytes at a time. SIMD compares give one bit per
 * byte of the window for each class (delimiter, quote, CR, LF). A prefix XOR of the quote
 * bits tells which bytes are inside quoted fields, as simdjson does for JSON strings, and
 * the records' ends and delimiters outside them are counted a record at a time, with the
 * state in registers (a `Run`). A window is taken only where that reading is csv.reader's:
 *   - every quote that opens a field is at the field's start, or is the second of a "" pair
 *     (a quote inside an unquoted field is text);
 *   - no CR outside quotes is the feed's last byte (an LF may follow in the next feed).
 * Any other window goes byte by byte through scan_bytes. The loop is built for AVX-512BW,
 * AVX2 and SSE2; the best the CPU has is chosen when the module loads, and use_simd() picks
 * another (the tests run each). Costs: bench/RESULTS.md. */
enum { SIMD_NONE = 0, SIMD_SSE2, SIMD_AVX2, SIMD_AVX512 };
static const char *const SIMD_NAMES[] = {"none", "sse2", "avx2", "avx512"};
static int simd_available = SIMD_NONE; /* the best this CPU and build have */
static int simd_chosen = SIMD_NONE;     /* what new scanners use */

#if defined(__SSE2__)
#include <emmintrin.h>
#include <stdint.h>
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define HAVE_AVX 1
#endif

typedef struct {
    long long rec_delims, records, ragged, expected, rec_start;
    int rec_nonempty, field_start;
    uint64_t in_quote;    /* 1: the window starts inside a quoted field */
    uint64_t after_close; /* 1: the last byte was a quote that closed a field */
} Run;

static inline __attribute__((always_inline)) void
run_load(const Scanner *self, Run *run)
{
    run->rec_delims = self->rec_delims;
    run->records = self->records;
    run->ragged = self->ragged;
    run->expected = self->expected;
    run->rec_start = self->rec_start;
    run->rec_nonempty = self->rec_nonempty;
    run->field_start = self->field_start;
    run->in_quote = (uint64_t)(self->in_quote && !self->quote_pending);
    run->after_close = (uint64_t)self->quote_pending;
}

static inline __attribute__((always_inline)) void
run_store(Scanner *self, const Run *run)
{
    self->rec_delims = run->rec_delims;
    self->records = run->records;
    self->ragged = run->ragged;
    self->expected = run->expected;
    self->rec_start = run->rec_start;
    self->rec_nonempty = run->rec_nonempty;
    self->field_start = run->field_start;
    /* csv.reader's state after a closing quote: still in the field, a quote just read */
    self->in_quote = (int)(run->in_quote | run->after_close);
    self->quote_pending = (int)run->after_close;
}

/* Without the popcnt instruction the builtin is a call into libgcc per record. */
static inline __attribute__((always_inline)) int
popcount64(uint64_t x, int hardware)
{
    if (hardware)
        return __builtin_popcountll(x);
    x = x - ((x >> 1) & 0x5555555555555555ULL);
    x = (x & 0x3333333333333333ULL) + ((x >> 2) & 0x3333333333333333ULL);
    x = (x + (x >> 4)) & 0x0F0F0F0F0F0F0F0FULL;
    return (int)((x * 0x0101010101010101ULL) >> 56);
}

/* Bit i: the XOR of bits 0..i (where the CPU has it, a carry-less multiplication by all ones
 * does this in one instruction: see the AVX builds). */
static inline uint64_t
prefix_xor(uint64_t x)
{
    x ^= x << 1;
    x ^= x << 2;
    x ^= x << 4;
    x ^= x << 8;
    x ^= x << 16;
    x ^= x << 32;
    return x;
}

enum { AFTER_OTHER = 0, AFTER_LF, AFTER_NONE };

/* Counts one window at data offset `base`; 0 (and nothing counted) if it is not one the bit
 * masks can read (above). `toggles` is prefix_xor(quotes); `after`: the byte after the
 * window (AFTER_LF, AFTER_OTHER, or AFTER_NONE at the feed's end). A record ends at an LF,
 * at a lone CR, or at the CR of a CRLF: its LF, if it is the next window's first byte, then
 * ends a blank record there, which is not counted. */
static inline __attribute__((always_inline)) int
count_window(Scanner *self, Run *run, uint64_t delims, uint64_t lfs, uint64_t crs,
             uint64_t quotes, uint64_t toggles, int after, long long base, int hardware)
{
    uint64_t inside = 0, closing = 0;
    if (quotes | run->in_quote) {
        /* bit i set: byte i is inside a quoted field (an opening quote is, a closing not) */
        inside = toggles ^ (0 - run->in_quote);
        closing = quotes & ~inside;
        const uint64_t outside = ~inside;
        const uint64_t starts = (((delims | lfs) & outside) << 1) | (uint64_t)run->field_start;
        if (quotes & inside & ~(starts | (closing << 1) | run->after_close))
            return 0;
        delims &= outside;
        lfs &= outside;
        crs &= outside;
    }
    if ((crs >> 63) && after == AFTER_NONE)
        return 0;
    const uint64_t crlf = crs & ((lfs >> 1) | ((uint64_t)(after == AFTER_LF) << 63));
    uint64_t ends = crs | (lfs & ~(crs << 1));
    uint64_t from = ~0ULL; /* bits at or after the current record's first byte */
    while (ends) {
        const uint64_t before = (ends - 1) & ~ends & from; /* [record start, its end) */
        run->rec_delims += popcount64(delims & before, hardware);
        if (run->rec_nonempty || before) {
            const long long index = run->records - self->header_records;
            if (index >= 0) {
                if (run->expected < 0)
                    run->expected = run->rec_delims;
                else if (run->rec_delims != run->expected)
                    run->ragged++;
                if (index == self->next_checkpoint) {
                    add_checkpoint(self, index, run->rec_start);
                    self->next_checkpoint += self->every;
                }
            }
            self->recent[run->records & (RECENT - 1)] = run->rec_start;
            run->records++;
        }
        const int at = __builtin_ctzll(ends);
        const int next = at + 1 + (int)((crlf >> at) & 1); /* after the LF of a CRLF */
        run->rec_start = base + next;
        run->rec_delims = 0;
        run->rec_nonempty = 0;
        ends &= ends - 1;
        from = (next >= 64) ? 0 : (~0ULL << next);
    }
    if (from) {
        run->rec_delims += popcount64(delims & from, hardware);
        run->rec_nonempty = 1;
        run->field_start = (int)(delims >> 63);
    } else {
        run->field_start = 1;
    }
    run->in_quote = inside >> 63;
    run->after_close = closing >> 63;
    return 1;
}

/* What follows the window at data[p]. */
static inline int
byte_after(const unsigned char *data, Py_ssize_t p, Py_ssize_t n)
{
    if (p + 64 >= n)
        return AFTER_NONE;
    return data[p + 64] == '\n' ? AFTER_LF : AFTER_OTHER;
}

/* One bit per byte of the 64 that equals `byte`. */
static inline uint64_t
sse2_bits(const __m128i chunk[4], __m128i byte)
{
    uint64_t bits = 0;
    for (int i = 0; i < 4; i++)
        bits |= (uint64_t)(uint16_t)_mm_movemask_epi8(_mm_cmpeq_epi8(chunk[i], byte)) << (16 * i);
    return bits;
}

/* Each windows_* counts the windows from data[p] on and returns where it stopped: at a window
 * it cannot take, or with fewer than 64 bytes left. */
static Py_ssize_t
windows_sse2(Scanner *self, const unsigned char *data, Py_ssize_t p, Py_ssize_t n)
{
    const __m128i delim = _mm_set1_epi8((char)self->delim), quote = _mm_set1_epi8((char)self->quote);
    const __m128i cr = _mm_set1_epi8('\r'), lf = _mm_set1_epi8('\n');
    Run run;
    run_load(self, &run);
    for (; n - p >= 64; p += 64) {
        __m128i chunk[4];
        for (int i = 0; i < 4; i++)
            chunk[i] = _mm_loadu_si128((const __m128i *)(data + p + 16 * i));
        const uint64_t quotes = sse2_bits(chunk, quote);
        if (!count_window(self, &run, sse2_bits(chunk, delim), sse2_bits(chunk, lf),
                          sse2_bits(chunk, cr), quotes, prefix_xor(quotes), byte_after(data, p, n),
                          self->pos + p, 0))
            break;
    }
    run_store(self, &run);
    return p;
}

#if defined(HAVE_AVX)
#define AVX_TARGET "popcnt,bmi,pclmul"

__attribute__((target(AVX_TARGET)))
static inline uint64_t
clmul_prefix_xor(uint64_t x)
{
    const __m128i ones = _mm_set1_epi8(-1);
    return (uint64_t)_mm_cvtsi128_si64(_mm_clmulepi64_si128(_mm_cvtsi64_si128((long long)x), ones, 0));
}

__attribute__((target("avx2," AVX_TARGET)))
static inline uint64_t
avx2_bits(__m256i low, __m256i high, __m256i byte)
{
    const uint32_t lo = (uint32_t)_mm256_movemask_epi8(_mm256_cmpeq_epi8(low, byte));
    const uint32_t hi = (uint32_t)_mm256_movemask_epi8(_mm256_cmpeq_epi8(high, byte));
    return (uint64_t)lo | ((uint64_t)hi << 32);
}

__attribute__((target("avx2," AVX_TARGET)))
static Py_ssize_t
windows_avx2(Scanner *self, const unsigned char *data, Py_ssize_t p, Py_ssize_t n)
{
    const __m256i delim = _mm256_set1_epi8((char)self->delim);
    const __m256i quote = _mm256_set1_epi8((char)self->quote);
    const __m256i cr = _mm256_set1_epi8('\r'), lf = _mm256_set1_epi8('\n');
    Run run;
    run_load(self, &run);
    for (; n - p >= 64; p += 64) {
        const __m256i low = _mm256_loadu_si256((const __m256i *)(data + p));
        const __m256i high = _mm256_loadu_si256((const __m256i *)(data + p + 32));
        const uint64_t quotes = avx2_bits(low, high, quote);
        if (!count_window(self, &run, avx2_bits(low, high, delim), avx2_bits(low, high, lf),
                          avx2_bits(low, high, cr), quotes, clmul_prefix_xor(quotes),
                          byte_after(data, p, n), self->pos + p, 1))
            break;
    }
    run_store(self, &run);
    return p;
}

__attribute__((target("avx512f,avx512bw," AVX_TARGET)))
static Py_ssize_t
windows_avx512(Scanner *self, const unsigned char *data, Py_ssize_t p, Py_ssize_t n)
{
    const __m512i delim = _mm512_set1_epi8((char)self->delim);
    const __m512i quote = _mm512_set1_epi8((char)self->quote);
    const __m512i cr = _mm512_set1_epi8('\r'), lf = _mm512_set1_epi8('\n');
    Run run;
    run_load(self, &run);
    for (; n - p >= 64; p += 64) {
        const __m512i chunk = _mm512_loadu_si512((const void *)(data + p));
        const uint64_t quotes = _mm512_cmpeq_epi8_mask(chunk, quote);
        if (!count_window(self, &run, _mm512_cmpeq_epi8_mask(chunk, delim),
                          _mm512_cmpeq_epi8_mask(chunk, lf), _mm512_cmpeq_epi8_mask(chunk, cr),
                          quotes, clmul_prefix_xor(quotes), byte_after(data, p, n), self->pos + p,
                          1))
            break;
    }
    run_store(self, &run);
    return p;
}
#endif

static void
find_simd(void)
{
    simd_available = SIMD_SSE2;
#if defined(HAVE_AVX)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("popcnt") &&
        __builtin_cpu_supports("bmi") && __builtin_cpu_supports("pclmul"))
        simd_available = SIMD_AVX2;
    if (simd_available == SIMD_AVX2 && __builtin_cpu_supports("avx512f") &&
        __builtin_cpu_supports("avx512bw"))
        simd_available = SIMD_AVX512;
#endif
}

/* The windows from data[p] on, by the scanner's SIMD build; returns where it stopped. */
static Py_ssize_t
scan_windows(Scanner *self, const unsigned char *data, Py_ssize_t p, Py_ssize_t n)
{
    switch (self->simd) {
#if defined(HAVE_AVX)
    case SIMD_AVX512:
        return windows_avx512(self, data, p, n);
    case SIMD_AVX2:
        return windows_avx2(self, data, p, n);
#endif
    case SIMD_SSE2:
        return windows_sse2(self, data, p, n);
    default:
        return p;
    }
}
#else
static void
find_simd(void)
{
    simd_available = SIMD_NONE;
}

static Py_ssize_t
scan_windows(Scanner *self, const unsigned char *data, Py_ssize_t p, Py_ssize_t n)
{
    (void)self, (void)data, (void)n;
    return p;
}
#endif

/* The whole state machine; called with or without the GIL (it touches no Python object). */
static void
scan(Scanner *self, const unsigned char *data, Py_ssize_t n)
{
    Py_ssize_t p = 0;
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
        if (!self->cr_pending && n - p >= 64) {
            Py_ssize_t stopped = scan_windows(self, data, p, n);
            self->windows += (stopped - p) / 64;
            if (stopped != p) {
                p = stopped;
                continue;
            }
        }
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
    self->simd = simd_chosen;
    self->windows = 0;
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
Scanner_windows(Scanner *self, void *Py_UNUSED(closure))
{
    if (refuse_if_busy(self) < 0)
        return NULL;
    return PyLong_FromLongLong(self->windows);
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
    {"windows", (getter)Scanner_windows, NULL,
     "64-byte windows counted by the SIMD loop (the rest went byte by byte).", NULL},
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

static PyObject *
simd_levels(PyObject *Py_UNUSED(module), PyObject *Py_UNUSED(ignored))
{
    PyObject *levels = PyList_New(0);
    for (int level = SIMD_NONE; levels != NULL && level <= simd_available; level++) {
        PyObject *name = PyUnicode_FromString(SIMD_NAMES[level]);
        if (name == NULL || PyList_Append(levels, name) < 0)
            Py_CLEAR(levels);
        Py_XDECREF(name);
    }
    return levels;
}

static PyObject *
use_simd(PyObject *Py_UNUSED(module), PyObject *arg)
{
    const char *wanted = PyUnicode_AsUTF8(arg);
    if (wanted == NULL)
        return NULL;
    for (int level = SIMD_NONE; level <= simd_available; level++) {
        if (strcmp(wanted, SIMD_NAMES[level]) == 0) {
            int was = simd_chosen;
            simd_chosen = level;
            return PyUnicode_FromString(SIMD_NAMES[was]);
        }
    }
    PyErr_Format(PyExc_ValueError, "%s is not one of this CPU's SIMD levels", wanted);
    return NULL;
}

static PyMethodDef module_methods[] = {
    {"simd_levels", simd_levels, METH_NOARGS,
     "The SIMD builds of the window loop this CPU can run, weakest first."},
    {"use_simd", use_simd, METH_O,
     "Scanners made from now on use this SIMD level; returns the one used before."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef scan_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "csvstore.analysis._scan",
    .m_doc = "The CSV record counter of csvstore.analysis, in C.",
    .m_size = -1,
    .m_methods = module_methods,
};

PyMODINIT_FUNC
PyInit__scan(void)
{
    if (PyType_Ready(&ScannerType) < 0)
        return NULL;
    find_simd();
    simd_chosen = simd_available;
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
