/* netagg.host_agent._native: CPython glue for the kernels in quantize.c.
 *
 * Each function takes buffers (numpy arrays, memoryviews, bytearrays) through the buffer protocol, checks their
 * element types, shapes and that no output overlaps another buffer, then runs one kernel over them. Arguments
 * it does not take raise Unsupported (a ValueError), on which host_agent/quantize.py, the Python API, hands the
 * call to its numpy reference: that either computes the same result more slowly or raises the proper error.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdbool.h>
#include <string.h>

#include "burst.h"
#include "engine_py.h"
#include "quantize.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
#define HOST_BIG_ENDIAN true
#else
#define HOST_BIG_ENDIAN false
#endif

/* Calls moving at least this many bytes release the GIL, so that other threads run meanwhile. Smaller ones
 * (a burst of packets: microseconds) keep it: a thread that gives up the GIL can wait a whole switch interval
 * (5 ms) to get it back while another thread runs Python code. */
#define RELEASE_GIL_BYTES ((size_t)1 << 20)

static PyObject *Unsupported;

/* The buffers of one call, released together. */
struct call {
    Py_buffer views[8];
    bool writes[8];
    int count;
};

static void release_all(struct call *c)
{
    while (c->count > 0)
        PyBuffer_Release(&c->views[--c->count]);
}

static Py_buffer *acquire(struct call *c, PyObject *obj, bool writable, int flags, const char *what)
{
    Py_buffer *v = &c->views[c->count];
    if (PyObject_GetBuffer(obj, v, flags | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0)) < 0) {
        PyObject *type, *value, *tb;
        PyErr_Fetch(&type, &value, &tb);
        PyErr_NormalizeException(&type, &value, &tb);
        PyErr_Format(Unsupported, "%s: %S", what, value ? value : Py_None);
        Py_XDECREF(type);
        Py_XDECREF(value);
        Py_XDECREF(tb);
        return NULL;
    }
    c->writes[c->count++] = writable;
    return v;
}

/* The element type of a struct-style format ("f", ">i", "=b", ...) and whether its byte order is not this
 * machine's. Returns false for anything but one element type. */
static bool parse_format(const char *fmt, char *type, bool *swapped)
{
    bool big = HOST_BIG_ENDIAN;
    if (fmt == NULL)
        fmt = "B";
    switch (*fmt) {
    case '@':
    case '=':
        fmt++;
        break;
    case '<':
        big = false;
        fmt++;
        break;
    case '>':
    case '!':
        big = true;
        fmt++;
        break;
    }
    if (fmt[0] == '\0' || fmt[1] != '\0')
        return false;
    *type = fmt[0];
    *swapped = big != HOST_BIG_ENDIAN;
    return true;
}

/* A 2-D array of 4-byte elements, lanes contiguous within each row, rows at any stride. */
struct rows {
    unsigned char *data;
    ptrdiff_t stride;
    size_t rows, lanes;
    bool swapped;
};

/* `types`: accepted format characters ("f" float32, "il" int32); `swappable`: may be in the other byte order. */
static bool get_rows(struct call *c, PyObject *obj, bool writable, const char *types, bool swappable,
                     const char *what, struct rows *r)
{
    Py_buffer *v = acquire(c, obj, writable, PyBUF_STRIDES, what);
    if (v == NULL)
        return false;
    char type;
    bool swapped;
    if (v->ndim != 2 || v->itemsize != 4 || !parse_format(v->format, &type, &swapped) || !strchr(types, type) ||
        (swapped && !swappable)) {
        PyErr_Format(Unsupported, "%s: expected a 2-D array of %s, got format '%s' with %d dimensions", what,
                     types[0] == 'f' ? "native float32" : "int32", v->format ? v->format : "B", v->ndim);
        return false;
    }
    if (v->shape[1] > 1 && v->strides[1] != 4) {
        PyErr_Format(Unsupported, "%s: the lanes of a row must be adjacent (element stride %zd)", what,
                     v->strides[1]);
        return false;
    }
    *r = (struct rows){v->buf, v->strides[0], (size_t)v->shape[0], (size_t)v->shape[1], swapped};
    return true;
}

/* A 1-D array of `length` elements at any stride: native signed integers of any width if `kind` is 'e'
 * (exponents), int8 if 'b', bool if '?'. */
static bool get_vector(struct call *c, PyObject *obj, bool writable, char kind, size_t length, const char *what,
                       struct na_ints *out)
{
    Py_buffer *v = acquire(c, obj, writable, PyBUF_STRIDES, what);
    if (v == NULL)
        return false;
    char type;
    bool swapped, ok = v->ndim == 1 && parse_format(v->format, &type, &swapped);
    if (ok && kind == 'e')
        ok = strchr("bhilq", type) && (v->itemsize == 1 || v->itemsize == 2 || v->itemsize == 4 || v->itemsize == 8) &&
             (v->itemsize == 1 || !swapped);
    else if (ok)
        ok = type == kind && v->itemsize == 1;
    if (!ok) {
        PyErr_Format(Unsupported, "%s: expected a 1-D array of %s, got format '%s' with %d dimensions", what,
                     kind == 'e' ? "signed integers" : kind == 'b' ? "int8" : "bool", v->format ? v->format : "B",
                     v->ndim);
        return false;
    }
    if ((size_t)v->shape[0] != length) {
        PyErr_Format(Unsupported, "%s: %zd elements for %zu blocks", what, v->shape[0], length);
        return false;
    }
    *out = (struct na_ints){v->buf, (int)v->itemsize, v->strides[0]};
    return true;
}

/* Address range [lo, hi) a buffer's elements span. */
static void extent(const Py_buffer *v, uintptr_t *lo, uintptr_t *hi)
{
    intptr_t below = 0, above = v->itemsize;
    for (int d = 0; d < v->ndim; d++) {
        if (v->shape[d] == 0) {
            *lo = *hi = (uintptr_t)v->buf;
            return;
        }
        intptr_t span = (intptr_t)(v->shape[d] - 1) * (v->strides ? v->strides[d] : v->itemsize);
        if (span < 0)
            below += span;
        else
            above += span;
    }
    *lo = (uintptr_t)v->buf + below;
    *hi = (uintptr_t)v->buf + above;
}

/* The kernels read and write element by element: an output sharing memory with any other buffer of the call
 * would give results that depend on the loop order. */
static bool check_disjoint(const struct call *c)
{
    for (int i = 0; i < c->count; i++) {
        if (!c->writes[i])
            continue;
        uintptr_t lo, hi;
        extent(&c->views[i], &lo, &hi);
        for (int j = 0; j < c->count; j++) {
            uintptr_t lo2, hi2;
            extent(&c->views[j], &lo2, &hi2);
            if (j != i && lo < hi && lo2 < hi2 && lo < hi2 && lo2 < hi) {
                PyErr_SetString(Unsupported, "an output buffer overlaps another buffer of the call");
                return false;
            }
        }
    }
    return true;
}

static bool get_int32(PyObject *obj, const char *what, int32_t *out)
{
    long v = PyLong_AsLong(obj);
    if (v == -1 && PyErr_Occurred())
        return false;
    if (v < INT32_MIN || v > INT32_MAX) {
        PyErr_Format(Unsupported, "%s: %ld does not fit int32", what, v);
        return false;
    }
    *out = (int32_t)v;
    return true;
}

static bool check_nargs(const char *name, Py_ssize_t nargs, Py_ssize_t expected)
{
    if (nargs == expected)
        return true;
    PyErr_Format(PyExc_TypeError, "%s() takes %zd arguments (%zd given)", name, expected, nargs);
    return false;
}

static PyThreadState *release_gil_if(size_t bytes) { return bytes >= RELEASE_GIL_BYTES ? PyEval_SaveThread() : NULL; }

static void restore_gil(PyThreadState *ts)
{
    if (ts != NULL)
        PyEval_RestoreThread(ts);
}

PyDoc_STRVAR(block_exponents_doc,
             "block_exponents(blocks, exps, nonfinite)\n--\n\n"
             "Write the exponent (int8) and non-finite flag (bool) of each row of float32 `blocks` (m, L) into\n"
             "`exps` and `nonfinite` (m,). Raises Unsupported for arguments it does not take.");

static PyObject *block_exponents(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    struct call c = {.count = 0};
    struct rows src;
    struct na_ints exps, flags;
    if (!check_nargs("block_exponents", nargs, 3) || !get_rows(&c, args[0], false, "f", false, "blocks", &src) ||
        !get_vector(&c, args[1], true, 'b', src.rows, "exps", &exps) ||
        !get_vector(&c, args[2], true, '?', src.rows, "nonfinite", &flags) || !check_disjoint(&c))
        goto fail;
    PyThreadState *ts = release_gil_if(4 * src.rows * src.lanes);
    na_block_exponents(src.data, src.stride, src.rows, src.lanes, (unsigned char *)exps.data, exps.stride,
                       (unsigned char *)flags.data, flags.stride);
    restore_gil(ts);
    release_all(&c);
    Py_RETURN_NONE;
fail:
    release_all(&c);
    return NULL;
}

PyDoc_STRVAR(quantize_doc,
             "quantize(blocks, shared, scale_base, own, nonfinite, out)\n--\n\n"
             "Quantize float32 `blocks` (m, L) into the int32 lanes `out` (m, L; either byte order, rows at any\n"
             "stride) with the scale 2**(scale_base - shared[i]); rows with nonfinite[i] or own[i] > shared[i]\n"
             "become zeros. `shared`, `own`: signed integers (m,); `nonfinite`: bool (m,). Raises Unsupported\n"
             "for arguments it does not take.");

static PyObject *quantize(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    struct call c = {.count = 0};
    struct rows src, dst;
    struct na_ints shared, own, flags;
    int32_t base;
    if (!check_nargs("quantize", nargs, 6) || !get_rows(&c, args[0], false, "f", false, "blocks", &src) ||
        !get_vector(&c, args[1], false, 'e', src.rows, "shared", &shared) ||
        !get_int32(args[2], "scale_base", &base) || !get_vector(&c, args[3], false, 'e', src.rows, "own", &own) ||
        !get_vector(&c, args[4], false, '?', src.rows, "nonfinite", &flags) ||
        !get_rows(&c, args[5], true, "il", true, "out", &dst) || !check_disjoint(&c))
        goto fail;
    if (dst.rows != src.rows || dst.lanes != src.lanes) {
        PyErr_Format(Unsupported, "out: shape (%zu, %zu) for blocks (%zu, %zu)", dst.rows, dst.lanes, src.rows,
                     src.lanes);
        goto fail;
    }
    PyThreadState *ts = release_gil_if(8 * src.rows * src.lanes);
    na_quantize(src.data, src.stride, src.rows, src.lanes, shared, base, own, flags, dst.data, dst.stride,
                dst.swapped);
    restore_gil(ts);
    release_all(&c);
    Py_RETURN_NONE;
fail:
    release_all(&c);
    return NULL;
}

PyDoc_STRVAR(requantize_doc,
             "requantize(pre, own, shared, out)\n--\n\n"
             "Pre-lanes `pre` (native int32, m x L) at the exponents `own` -> the lanes `out` (m, L; either byte\n"
             "order, rows at any stride) of the exponents `shared`; rows with own[i] > shared[i] become zeros.\n"
             "`own`, `shared`: signed integers (m,). Raises Unsupported for arguments it does not take.");

static PyObject *requantize(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    struct call c = {.count = 0};
    struct rows src, dst;
    struct na_ints own, shared;
    if (!check_nargs("requantize", nargs, 4) || !get_rows(&c, args[0], false, "il", false, "pre", &src) ||
        !get_vector(&c, args[1], false, 'e', src.rows, "own", &own) ||
        !get_vector(&c, args[2], false, 'e', src.rows, "shared", &shared) ||
        !get_rows(&c, args[3], true, "il", true, "out", &dst) || !check_disjoint(&c))
        goto fail;
    if (dst.rows != src.rows || dst.lanes != src.lanes) {
        PyErr_Format(Unsupported, "out: shape (%zu, %zu) for pre-lanes (%zu, %zu)", dst.rows, dst.lanes, src.rows,
                     src.lanes);
        goto fail;
    }
    PyThreadState *ts = release_gil_if(8 * src.rows * src.lanes);
    na_requantize(src.data, src.stride, src.rows, src.lanes, own, shared, dst.data, dst.stride, dst.swapped);
    restore_gil(ts);
    release_all(&c);
    Py_RETURN_NONE;
fail:
    release_all(&c);
    return NULL;
}

PyDoc_STRVAR(dequantize_doc,
             "dequantize(sums, shared, scale_base, nonfinite, out)\n--\n\n"
             "Dequantize int32 lanes `sums` (m, L; either byte order, rows at any stride) into float32 `out`\n"
             "(m, L) with the scale 2**-(scale_base - shared[i]); rows with nonfinite[i] become NaN\n"
             "(`nonfinite` may be None). Raises Unsupported for arguments it does not take.");

static PyObject *dequantize(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    struct call c = {.count = 0};
    struct rows src, dst;
    struct na_ints shared, flags = {NULL, 1, 0};
    int32_t base;
    if (!check_nargs("dequantize", nargs, 5) || !get_rows(&c, args[0], false, "il", true, "sums", &src) ||
        !get_vector(&c, args[1], false, 'e', src.rows, "shared", &shared) ||
        !get_int32(args[2], "scale_base", &base) ||
        (args[3] != Py_None && !get_vector(&c, args[3], false, '?', src.rows, "nonfinite", &flags)) ||
        !get_rows(&c, args[4], true, "f", false, "out", &dst) || !check_disjoint(&c))
        goto fail;
    if (dst.rows != src.rows || dst.lanes != src.lanes) {
        PyErr_Format(Unsupported, "out: shape (%zu, %zu) for sums (%zu, %zu)", dst.rows, dst.lanes, src.rows,
                     src.lanes);
        goto fail;
    }
    PyThreadState *ts = release_gil_if(8 * src.rows * src.lanes);
    na_dequantize(src.data, src.stride, src.swapped, src.rows, src.lanes, shared, base, flags, dst.data,
                  dst.stride);
    restore_gil(ts);
    release_all(&c);
    Py_RETURN_NONE;
fail:
    release_all(&c);
    return NULL;
}

PyDoc_STRVAR(copy_doc, "copy(dst, src)\n--\n\n"
                       "memcpy between two contiguous buffers of the same size: the benchmarks' figure for what\n"
                       "this machine's memory allows.");

static PyObject *copy(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    struct call c = {.count = 0};
    Py_buffer *dst, *src;
    if (!check_nargs("copy", nargs, 2) || !(dst = acquire(&c, args[0], true, PyBUF_C_CONTIGUOUS, "dst")) ||
        !(src = acquire(&c, args[1], false, PyBUF_C_CONTIGUOUS, "src")) || !check_disjoint(&c))
        goto fail;
    if (dst->len != src->len) {
        PyErr_Format(Unsupported, "copy of %zd bytes into %zd", src->len, dst->len);
        goto fail;
    }
    PyThreadState *ts = release_gil_if((size_t)src->len);
    memcpy(dst->buf, src->buf, (size_t)src->len);
    restore_gil(ts);
    release_all(&c);
    Py_RETURN_NONE;
fail:
    release_all(&c);
    return NULL;
}

PyDoc_STRVAR(available_kernels_doc,
             "available_kernels()\n--\n\nNames of the kernel sets this build and CPU run, best first.");

static PyObject *available_kernels(PyObject *self, PyObject *unused)
{
    (void)self;
    (void)unused;
    const char *const *names = na_available_kernels();
    Py_ssize_t n = 0;
    while (names[n])
        n++;
    PyObject *result = PyTuple_New(n);
    for (Py_ssize_t i = 0; result && i < n; i++) {
        PyObject *name = PyUnicode_FromString(names[i]);
        if (name == NULL) {
            Py_CLEAR(result);
            break;
        }
        PyTuple_SET_ITEM(result, i, name);
    }
    return result;
}

PyDoc_STRVAR(active_kernels_doc, "active_kernels()\n--\n\nName of the kernel set in use.");

static PyObject *active_kernels(PyObject *self, PyObject *unused)
{
    (void)self;
    (void)unused;
    return PyUnicode_FromString(na_active->name);
}

PyDoc_STRVAR(select_kernels_doc,
             "select_kernels(name)\n--\n\n"
             "Use the kernel set `name` (one of available_kernels()) from now on, in every thread; tests run\n"
             "each set against the reference. All sets compute the same bits.");

static PyObject *select_kernels(PyObject *self, PyObject *arg)
{
    (void)self;
    const char *name = PyUnicode_AsUTF8(arg);
    if (name == NULL)
        return NULL;
    if (!na_select_kernels(name)) {
        PyErr_Format(PyExc_ValueError, "kernel set %R is not available here", arg);
        return NULL;
    }
    Py_RETURN_NONE;
}

/* ------------------------------------------------------------------------------------------------------------
 * Burst datagram I/O (burst.c): the transport's one system call per burst. */

static bool get_size(PyObject *obj, const char *what, size_t *out)
{
    Py_ssize_t v = PyNumber_AsSsize_t(obj, PyExc_OverflowError);
    if (v == -1 && PyErr_Occurred())
        return false;
    if (v < 0) {
        PyErr_Format(PyExc_ValueError, "%s: %zd is negative", what, v);
        return false;
    }
    *out = (size_t)v;
    return true;
}

PyDoc_STRVAR(send_burst_doc,
             "send_burst(fd, buf, seg, count, mode) -> (sent, calls, errno)\n--\n\n"
             "Send `count` datagrams of `seg` bytes stored back to back in `buf` on the connected UDP socket\n"
             "`fd`: mode 0 UDP GSO (sendmsg with UDP_SEGMENT, up to 64 per call), mode 1 sendmmsg. Never\n"
             "blocks; `errno` says what stopped the burst early (0: all were sent).");

static PyObject *send_burst(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    struct call c = {.count = 0};
    Py_buffer *buf;
    size_t seg, count, mode;
    int fd = -1;
    if (!check_nargs("send_burst", nargs, 5) || (fd = PyObject_AsFileDescriptor(args[0])) < 0 ||
        !get_size(args[2], "seg", &seg) || !get_size(args[3], "count", &count) ||
        !get_size(args[4], "mode", &mode) || !(buf = acquire(&c, args[1], false, PyBUF_C_CONTIGUOUS, "buf")))
        goto fail;
    if (mode > NA_SEND_MMSG || seg == 0 || seg > 65507 || (size_t)buf->len < seg * count) {
        PyErr_Format(PyExc_ValueError, "send_burst: mode %zu, %zu datagrams of %zu bytes in a %zd-byte buffer",
                     mode, count, seg, buf->len);
        goto fail;
    }
    struct na_send_result r = na_send_burst(fd, buf->buf, seg, count, (enum na_send_mode)mode);
    release_all(&c);
    return Py_BuildValue("nni", (Py_ssize_t)r.sent, (Py_ssize_t)r.calls, r.error);
fail:
    release_all(&c);
    return NULL;
}

PyDoc_STRVAR(recv_burst_doc,
             "recv_burst(fd, buf, seg, max_count, mode) -> (good, wrong_size, calls, errno)\n--\n\n"
             "Receive from the UDP socket `fd` until it is empty or `max_count` datagrams of `seg` bytes are\n"
             "stored back to back at the start of `buf`: mode 0 recvmsg with UDP GRO (`buf` needs 64 KiB of\n"
             "room beyond max_count * seg), mode 1 recvmmsg. Datagrams of another size are counted and\n"
             "dropped. Never blocks; `errno` is a receive error other than EAGAIN or ECONNREFUSED (0: none).");

static PyObject *recv_burst(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    struct call c = {.count = 0};
    Py_buffer *buf;
    size_t seg, max_count, mode;
    int fd = -1;
    if (!check_nargs("recv_burst", nargs, 5) || (fd = PyObject_AsFileDescriptor(args[0])) < 0 ||
        !get_size(args[2], "seg", &seg) || !get_size(args[3], "max_count", &max_count) ||
        !get_size(args[4], "mode", &mode) || !(buf = acquire(&c, args[1], true, PyBUF_C_CONTIGUOUS, "buf")))
        goto fail;
    size_t need = seg * max_count + (mode == NA_RECV_GRO ? NA_GRO_ROOM : 0);
    if (mode > NA_RECV_MMSG || seg == 0 || (size_t)buf->len < need) {
        PyErr_Format(PyExc_ValueError, "recv_burst: mode %zu needs %zu bytes for %zu datagrams of %zu, got %zd",
                     mode, need, max_count, seg, buf->len);
        goto fail;
    }
    struct na_recv_result r = na_recv_burst(fd, buf->buf, seg, max_count, (enum na_recv_mode)mode);
    release_all(&c);
    return Py_BuildValue("nnni", (Py_ssize_t)r.good, (Py_ssize_t)r.wrong_size, (Py_ssize_t)r.calls, r.error);
fail:
    release_all(&c);
    return NULL;
}

PyDoc_STRVAR(enable_gro_doc, "enable_gro(fd) -> errno\n--\n\nTurn UDP GRO on for the socket (0: done).");

static PyObject *enable_gro(PyObject *self, PyObject *arg)
{
    (void)self;
    int fd = PyObject_AsFileDescriptor(arg);
    return fd < 0 ? NULL : PyLong_FromLong(na_enable_gro(fd));
}

PyDoc_STRVAR(disable_gro_doc, "disable_gro(fd) -> errno\n--\n\nTurn UDP GRO off for the socket (0: done).");

static PyObject *disable_gro(PyObject *self, PyObject *arg)
{
    (void)self;
    int fd = PyObject_AsFileDescriptor(arg);
    return fd < 0 ? NULL : PyLong_FromLong(na_disable_gro(fd));
}

PyDoc_STRVAR(probe_gso_doc,
             "probe_gso(fd, seg) -> errno\n--\n\nWhether the kernel takes UDP_SEGMENT on the socket (0: yes).");

static PyObject *probe_gso(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    size_t seg;
    int fd;
    if (!check_nargs("probe_gso", nargs, 2) || (fd = PyObject_AsFileDescriptor(args[0])) < 0 ||
        !get_size(args[1], "seg", &seg))
        return NULL;
    return PyLong_FromLong(na_probe_gso(fd, seg));
}

/* A C-contiguous buffer of at least `count` elements of `itemsize` bytes (a numpy array of the right dtype). */
static void *get_array(struct call *c, PyObject *obj, bool writable, Py_ssize_t itemsize, size_t count,
                       const char *what)
{
    Py_buffer *v = acquire(c, obj, writable, PyBUF_C_CONTIGUOUS, what);
    if (v == NULL)
        return NULL;
    if (v->itemsize != itemsize || (size_t)v->len < count * (size_t)itemsize) {
        PyErr_Format(PyExc_ValueError, "%s: need %zu elements of %zd bytes, got %zd bytes of %zd-byte elements",
                     what, count, itemsize, v->len, v->itemsize);
        return NULL;
    }
    return v->buf;
}

PyDoc_STRVAR(match_results_doc,
             "match_results(buf, count, seg, expect, phase, min_phase, tsi, pool, seen, out_pos, out_slot)\n"
             "--\n\n"
             "Check `count` received messages of `seg` bytes in `buf` against `expect` = (byte 0, job,\n"
             "undefined flag bits, key) and the slots' rounds in flight (int8 phase >= min_phase, uint32 tsi,\n"
             "uint16 pool_index, one zeroed uint8 scratch byte each); write the accepted ones' positions and\n"
             "slots (int64) in arrival order. Returns (accepted, malformed, forged, duplicates).");

static PyObject *match_results(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    struct call c = {.count = 0};
    size_t count, seg, window;
    uint32_t b0, job, undefined, key;
    long min_phase;
    if (!check_nargs("match_results", nargs, 11) || !get_size(args[1], "count", &count) ||
        !get_size(args[2], "seg", &seg))
        return NULL;
    if (!PyArg_ParseTuple(args[3], "IIII", &b0, &job, &undefined, &key))
        return NULL;
    if ((min_phase = PyLong_AsLong(args[5])) == -1 && PyErr_Occurred())
        return NULL;
    Py_buffer *pv = acquire(&c, args[4], false, PyBUF_C_CONTIGUOUS, "phase");
    if (pv == NULL)
        goto fail;
    window = (size_t)pv->len;
    const unsigned char *buf = get_array(&c, args[0], false, 1, count * seg, "buf");
    const uint32_t *tsi = buf ? get_array(&c, args[6], false, 4, window, "tsi") : NULL;
    const uint16_t *pool = tsi ? get_array(&c, args[7], false, 2, window, "pool") : NULL;
    uint8_t *seen = pool ? get_array(&c, args[8], true, 1, window, "seen") : NULL;
    int64_t *out_pos = seen ? get_array(&c, args[9], true, 8, count, "out_pos") : NULL;
    int64_t *out_slot = out_pos ? get_array(&c, args[10], true, 8, count, "out_slot") : NULL;
    if (out_slot == NULL)
        goto fail;
    if (seg < 18) {
        PyErr_Format(PyExc_ValueError, "match_results: %zu-byte messages hold no header", seg);
        goto fail;
    }
    struct na_expect want = {(uint8_t)b0, (uint8_t)job, (uint8_t)undefined, key};
    struct na_slots slots = {window, pv->buf, (int8_t)min_phase, tsi, pool, seen};
    struct na_match r = na_match_results(buf, count, seg, &want, &slots, out_pos, out_slot);
    release_all(&c);
    return Py_BuildValue("nnnn", (Py_ssize_t)r.accepted, (Py_ssize_t)r.malformed, (Py_ssize_t)r.forged,
                         (Py_ssize_t)r.duplicates);
fail:
    release_all(&c);
    return NULL;
}

PyDoc_STRVAR(write_headers_doc,
             "write_headers(pkts, seg, which, tsi, pool, exp, flags, op)\n--\n\n"
             "Write the round fields (uint32 tsi, uint16 pool_index, int8 exp, uint8 flags, uint32 op; arrays by\n"
             "slot) of the slots in `which` (int64) into their packets: slot s's at byte s * seg of `pkts`.");

static PyObject *write_headers(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    struct call c = {.count = 0};
    size_t seg;
    if (!check_nargs("write_headers", nargs, 8) || !get_size(args[1], "seg", &seg))
        return NULL;
    Py_buffer *pk = acquire(&c, args[0], true, PyBUF_C_CONTIGUOUS, "pkts");
    Py_buffer *wh = pk ? acquire(&c, args[2], false, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT, "which") : NULL;
    if (wh == NULL)
        goto fail;
    if (wh->itemsize != 8 || seg < 18) {
        PyErr_SetString(PyExc_ValueError, "write_headers: `which` must be int64 and seg hold a header");
        goto fail;
    }
    size_t window = (size_t)pk->len / seg, count = (size_t)wh->len / 8;
    const int64_t *which = wh->buf;
    for (size_t k = 0; k < count; k++) {
        if (which[k] < 0 || (size_t)which[k] >= window) {
            PyErr_Format(PyExc_ValueError, "write_headers: slot %lld outside the %zu packets", (long long)which[k],
                         window);
            goto fail;
        }
    }
    const uint32_t *tsi = get_array(&c, args[3], false, 4, window, "tsi");
    const uint16_t *pool = tsi ? get_array(&c, args[4], false, 2, window, "pool") : NULL;
    const int8_t *exp = pool ? get_array(&c, args[5], false, 1, window, "exp") : NULL;
    const uint8_t *flags = exp ? get_array(&c, args[6], false, 1, window, "flags") : NULL;
    const uint32_t *op = flags ? get_array(&c, args[7], false, 4, window, "op") : NULL;
    if (op == NULL)
        goto fail;
    na_write_headers(pk->buf, seg, which, count, tsi, pool, exp, flags, op);
    release_all(&c);
    Py_RETURN_NONE;
fail:
    release_all(&c);
    return NULL;
}

static PyMethodDef methods[] = {
    {"block_exponents", (PyCFunction)(void (*)(void))block_exponents, METH_FASTCALL, block_exponents_doc},
    {"quantize", (PyCFunction)(void (*)(void))quantize, METH_FASTCALL, quantize_doc},
    {"dequantize", (PyCFunction)(void (*)(void))dequantize, METH_FASTCALL, dequantize_doc},
    {"requantize", (PyCFunction)(void (*)(void))requantize, METH_FASTCALL, requantize_doc},
    {"copy", (PyCFunction)(void (*)(void))copy, METH_FASTCALL, copy_doc},
    {"available_kernels", available_kernels, METH_NOARGS, available_kernels_doc},
    {"active_kernels", active_kernels, METH_NOARGS, active_kernels_doc},
    {"select_kernels", select_kernels, METH_O, select_kernels_doc},
    {"send_burst", (PyCFunction)(void (*)(void))send_burst, METH_FASTCALL, send_burst_doc},
    {"recv_burst", (PyCFunction)(void (*)(void))recv_burst, METH_FASTCALL, recv_burst_doc},
    {"enable_gro", enable_gro, METH_O, enable_gro_doc},
    {"disable_gro", disable_gro, METH_O, disable_gro_doc},
    {"match_results", (PyCFunction)(void (*)(void))match_results, METH_FASTCALL, match_results_doc},
    {"write_headers", (PyCFunction)(void (*)(void))write_headers, METH_FASTCALL, write_headers_doc},
    {"probe_gso", (PyCFunction)(void (*)(void))probe_gso, METH_FASTCALL, probe_gso_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "netagg.host_agent._native",
    .m_doc = "Compiled block floating point kernels and burst datagram I/O; host_agent/quantize.py and\n"
              "host_agent/transport.py are their users.",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC PyInit__native(void)
{
    na_select_kernels(NULL);
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    Unsupported = PyErr_NewExceptionWithDoc(
        "netagg.host_agent._native.Unsupported",
        "Arguments the kernels do not take as they are (type, shape, layout, overlap); the reference does.",
        PyExc_ValueError, NULL);
    if (Unsupported == NULL || PyModule_AddObjectRef(m, "Unsupported", Unsupported) < 0 ||
        na_add_engine_type(m) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
