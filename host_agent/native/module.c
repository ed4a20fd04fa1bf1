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
    Py_buffer views[6];
    bool writes[6];
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

static PyMethodDef methods[] = {
    {"block_exponents", (PyCFunction)(void (*)(void))block_exponents, METH_FASTCALL, block_exponents_doc},
    {"quantize", (PyCFunction)(void (*)(void))quantize, METH_FASTCALL, quantize_doc},
    {"dequantize", (PyCFunction)(void (*)(void))dequantize, METH_FASTCALL, dequantize_doc},
    {"copy", (PyCFunction)(void (*)(void))copy, METH_FASTCALL, copy_doc},
    {"available_kernels", available_kernels, METH_NOARGS, available_kernels_doc},
    {"active_kernels", active_kernels, METH_NOARGS, active_kernels_doc},
    {"select_kernels", select_kernels, METH_O, select_kernels_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "netagg.host_agent._native",
    .m_doc = "Compiled block floating point kernels; host_agent/quantize.py is the API and the reference.",
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
    if (Unsupported == NULL || PyModule_AddObjectRef(m, "Unsupported", Unsupported) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
