/* netagg.host_agent._native.Engine: CPython glue for engine.c, used by host_agent/native_transport.py.
 *
 * The engine keeps raw pointers into each operation's staged arrays; this type holds a buffer export of every
 * one of them (so numpy cannot free or resize them) until the operation completes or the engine goes away. One
 * thread drives an engine (add, step, slots); notify and stats may be called from any thread.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdbool.h>
#include <string.h>

#include "engine.h"
#include "engine_py.h"

enum { OP_VIEWS = 6 };

struct held {
    int64_t index;
    Py_buffer views[OP_VIEWS];
    int count;
};

typedef struct {
    PyObject_HEAD struct na_engine *engine;
    size_t lanes, window;
    struct held *held;
    size_t nheld, cap;
} EngineObject;

static void release_held(struct held *h)
{
    while (h->count > 0)
        PyBuffer_Release(&h->views[--h->count]);
}

static void release_index(EngineObject *self, int64_t index)
{
    for (size_t i = 0; i < self->nheld; i++) {
        if (self->held[i].index == index) {
            release_held(&self->held[i]);
            self->held[i] = self->held[--self->nheld];
            return;
        }
    }
}

static void Engine_dealloc(EngineObject *self)
{
    for (size_t i = 0; i < self->nheld; i++)
        release_held(&self->held[i]);
    PyMem_Free(self->held);
    na_engine_free(self->engine);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int Engine_init(EngineObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"fd",          "wake_fd", "window",    "lanes",    "seg",      "budget",
                             "scale_base",  "b0_result", "job",     "undefined_flags",      "key",
                             "header",      "send_mode", "recv_mode", "gro_probe", "rto",   "congestion",
                             "loss",        "loss_seed", "deadline", NULL};
    struct na_engine_config cfg;
    memset(&cfg, 0, sizeof cfg);
    unsigned int b0, job, undefined;
    unsigned long key;
    unsigned long long seed;
    Py_buffer header;
    int gro_probe;
    PyObject *congestion;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "iinnnniIIIky*iip(dddd)OdKd", kwlist, &cfg.fd, &cfg.wake_fd,
                                     &cfg.window, &cfg.lanes, &cfg.seg, &cfg.budget, &cfg.scale_base, &b0, &job,
                                     &undefined, &key, &header, &cfg.send_mode, &cfg.recv_mode, &gro_probe,
                                     &cfg.rto_initial, &cfg.rto_min, &cfg.rto_max, &cfg.fast_retransmit_margin,
                                     &congestion, &cfg.loss, &seed, &cfg.deadline))
        return -1;
    bool header_ok = header.len == (Py_ssize_t)sizeof cfg.header;
    if (header_ok)
        memcpy(cfg.header, header.buf, sizeof cfg.header);
    PyBuffer_Release(&header);
    if (!header_ok) {
        PyErr_Format(PyExc_ValueError, "Engine: header must be %zu bytes", sizeof cfg.header);
        return -1;
    }
    if (congestion != Py_None) {
        if (!PyArg_ParseTuple(congestion, "dddddd", &cfg.cw_initial, &cfg.cw_min, &cfg.cw_decrease,
                              &cfg.cw_delay_target, &cfg.cw_loss_queue_share, &cfg.cw_min_rtt_period))
            return -1;
        cfg.congestion = true;
    }
    cfg.b0_result = (uint8_t)b0;
    cfg.job = (uint8_t)job;
    cfg.undefined_flags = (uint8_t)undefined;
    cfg.key = (uint32_t)key;
    cfg.gro_probe = gro_probe;
    cfg.loss_seed = seed;
    if (cfg.send_mode < 0 || cfg.send_mode > 1 || cfg.recv_mode < 0 || cfg.recv_mode > 1) {
        PyErr_SetString(PyExc_ValueError, "Engine: send_mode and recv_mode are 0 or 1");
        return -1;
    }
    if (self->engine != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Engine: already initialised");
        return -1;
    }
    self->engine = na_engine_new(&cfg);
    if (self->engine == NULL) {
        PyErr_Format(PyExc_ValueError, "Engine: unusable configuration (window %zu, lanes %zu, seg %zu, budget %zu)"
                                       " or out of memory", cfg.window, cfg.lanes, cfg.seg, cfg.budget);
        return -1;
    }
    self->lanes = cfg.lanes;
    self->window = cfg.window;
    return 0;
}

/* Rows of `lanes` 4-byte values (2-D, elements contiguous within a row, any row stride); 0 rows: any shape. */
static bool get_rows(struct held *h, PyObject *obj, bool writable, size_t lanes, const char *what,
                     unsigned char **data, ptrdiff_t *stride, int64_t *rows)
{
    Py_buffer *v = &h->views[h->count];
    if (PyObject_GetBuffer(obj, v, PyBUF_STRIDES | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0)) < 0)
        return false;
    h->count++;
    if (v->ndim != 2) {
        PyErr_Format(PyExc_ValueError, "Engine.add: %s must be 2-D", what);
        return false;
    }
    *rows = v->shape[0];
    *data = v->buf;
    *stride = v->strides[0];
    if (*rows == 0)
        return true;
    if (v->itemsize != 4 || (size_t)v->shape[1] != lanes || v->strides[1] != 4) {
        PyErr_Format(PyExc_ValueError, "Engine.add: %s must hold rows of %zu contiguous 4-byte values", what, lanes);
        return false;
    }
    return true;
}

static bool get_vector(struct held *h, PyObject *obj, bool writable, int64_t count, const char *what, void **data)
{
    Py_buffer *v = &h->views[h->count];
    if (PyObject_GetBuffer(obj, v, PyBUF_C_CONTIGUOUS | (writable ? PyBUF_WRITABLE : 0)) < 0)
        return false;
    h->count++;
    if (v->itemsize != 1 || v->len < count) {
        PyErr_Format(PyExc_ValueError, "Engine.add: %s must hold %lld one-byte values", what, (long long)count);
        return false;
    }
    *data = v->buf;
    return true;
}

PyDoc_STRVAR(add_doc, "add(index, op_id, exact, prescaled, abort, head, tail, exps, nonfinite, used_exps,\n"
                      "    result_nonfinite)\n--\n\n"
                      "Queue an operation: its rows are `head` then `tail` (2-D, rows of `lanes` float32, int32\n"
                      "lane pairs when exact, int32 pre-lanes when prescaled), with per-row int8 `exps`, bool\n"
                      "`nonfinite`, writable int8 `used_exps` and, when prescaled, writable bool\n"
                      "`result_nonfinite` (else None). The engine holds the buffers until the operation completes.");

static PyObject *Engine_add(EngineObject *self, PyObject *args)
{
    long long index;
    unsigned long op_id;
    int exact, prescaled, abort_;
    PyObject *head, *tail, *exps, *nonfinite, *used, *result_nf;
    if (!PyArg_ParseTuple(args, "LkpppOOOOOO", &index, &op_id, &exact, &prescaled, &abort_, &head, &tail, &exps,
                          &nonfinite, &used, &result_nf))
        return NULL;
    if (prescaled && (exact || result_nf == Py_None)) {
        PyErr_SetString(PyExc_ValueError, "Engine.add: prescaled rows are not exact and need result_nonfinite");
        return NULL;
    }
    if (self->nheld == self->cap) {
        size_t cap = self->cap ? 2 * self->cap : 16;
        struct held *more = PyMem_Realloc(self->held, cap * sizeof *more);
        if (more == NULL)
            return PyErr_NoMemory();
        self->held = more;
        self->cap = cap;
    }
    struct held *h = &self->held[self->nheld];
    h->index = index;
    h->count = 0;
    struct na_op_desc d;
    memset(&d, 0, sizeof d);
    d.index = index;
    d.op_id = (uint32_t)op_id;
    d.exact = exact;
    d.prescaled = prescaled;
    d.abort = abort_;
    int64_t tail_rows;
    void *e = NULL, *n = NULL, *u = NULL;
    if (!get_rows(h, head, true, self->lanes, "head", &d.head, &d.head_stride, &d.head_rows) ||
        !get_rows(h, tail, true, self->lanes, "tail", &d.tail, &d.tail_stride, &tail_rows))
        goto fail;
    d.blocks = d.head_rows + tail_rows;
    if (!get_vector(h, exps, false, d.blocks, "exps", &e) || !get_vector(h, nonfinite, false, d.blocks, "nonfinite", &n) ||
        !get_vector(h, used, true, d.blocks, "used_exps", &u))
        goto fail;
    if (prescaled) {
        void *rn = NULL;
        if (!get_vector(h, result_nf, true, d.blocks, "result_nonfinite", &rn))
            goto fail;
        d.result_nonfinite = rn;
    }
    d.exps = e;
    d.nonfinite = n;
    d.used_exps = u;
    if (d.blocks == 0) {
        PyErr_SetString(PyExc_ValueError, "Engine.add: an operation of no blocks completes without the engine");
        goto fail;
    }
    if (!na_engine_add(self->engine, &d)) {
        PyErr_NoMemory();
        goto fail;
    }
    self->nheld++;
    Py_RETURN_NONE;
fail:
    release_held(h);
    return NULL;
}

PyDoc_STRVAR(step_doc, "step(max_wait) -> (completed, event, a, b, c, d)\n--\n\n"
                       "Run the data path for at most `max_wait` seconds without the GIL; returns the indices of\n"
                       "the operations completed meanwhile and an event code with its values (engine.h).");

static PyObject *Engine_step(EngineObject *self, PyObject *arg)
{
    double max_wait = PyFloat_AsDouble(arg);
    if (max_wait == -1.0 && PyErr_Occurred())
        return NULL;
    struct na_step r;
    Py_BEGIN_ALLOW_THREADS r = na_engine_step(self->engine, max_wait);
    Py_END_ALLOW_THREADS PyObject *done = PyList_New((Py_ssize_t)r.completed);
    if (done == NULL)
        return NULL;
    const int64_t *indices = na_engine_completed(self->engine);
    for (size_t i = 0; i < r.completed; i++) {
        PyObject *v = PyLong_FromLongLong(indices[i]);
        if (v == NULL) {
            Py_DECREF(done);
            return NULL;
        }
        PyList_SET_ITEM(done, (Py_ssize_t)i, v);
        release_index(self, indices[i]);
    }
    return Py_BuildValue("(NiLLLL)", done, r.event, (long long)r.a, (long long)r.b, (long long)r.c, (long long)r.d);
}

PyDoc_STRVAR(notify_doc, "notify()\n--\n\nMake a running step return at its next pass (any thread).");

static PyObject *Engine_notify(EngineObject *self, PyObject *unused)
{
    (void)unused;
    na_engine_notify(self->engine);
    Py_RETURN_NONE;
}

PyDoc_STRVAR(stats_doc, "stats() -> tuple\n--\n\n"
                        "(updates_sent, bytes_sent, warmups_sent, retransmissions, dropped_on_purpose,\n"
                        "send_buffer_full, results, duplicate_results, malformed, forged, send_calls, recv_calls,\n"
                        "window_decreases, window, send_mode, recv_mode)");

static PyObject *Engine_stats(EngineObject *self, PyObject *unused)
{
    (void)unused;
    struct na_engine_stats s;
    na_engine_stats(self->engine, &s);
    return Py_BuildValue("(KKKKKKKKKKKKKdii)", (unsigned long long)s.updates_sent, (unsigned long long)s.bytes_sent,
                         (unsigned long long)s.warmups_sent, (unsigned long long)s.retransmissions,
                         (unsigned long long)s.dropped_on_purpose, (unsigned long long)s.send_buffer_full,
                         (unsigned long long)s.results, (unsigned long long)s.duplicate_results,
                         (unsigned long long)s.malformed, (unsigned long long)s.forged,
                         (unsigned long long)s.send_calls, (unsigned long long)s.recv_calls,
                         (unsigned long long)s.window_decreases, s.window, s.send_mode, s.recv_mode);
}

PyDoc_STRVAR(op_state_doc, "op_state(index) -> (started_at, progress_at, remaining, rows_sent, first_chunk) | None"
                           "\n--\n\nThe engine's bookkeeping of a queued operation (started_at None: nothing sent).");

static PyObject *Engine_op_state(EngineObject *self, PyObject *arg)
{
    long long index = PyLong_AsLongLong(arg);
    if (index == -1 && PyErr_Occurred())
        return NULL;
    struct na_op_state st = na_engine_op_state(self->engine, index);
    if (!st.found)
        Py_RETURN_NONE;
    PyObject *started = st.started_at < 0 ? Py_NewRef(Py_None) : PyFloat_FromDouble(st.started_at);
    if (started == NULL)
        return NULL;
    return Py_BuildValue("(NdLLL)", started, st.progress_at, (long long)st.remaining, (long long)st.rows_sent,
                         (long long)st.first_chunk);
}

PyDoc_STRVAR(slots_doc, "slots() -> list of (phase, round, out_index, chunk)\n--\n\n"
                        "Every slot's phase, round number, the operation of its data round in flight (-1: none)\n"
                        "and its next chunk, for error reports.");

static PyObject *Engine_slots(EngineObject *self, PyObject *unused)
{
    (void)unused;
    PyObject *out = PyList_New((Py_ssize_t)self->window);
    if (out == NULL)
        return NULL;
    for (size_t s = 0; s < self->window; s++) {
        int phase;
        int64_t round, index, chunk;
        na_engine_slot(self->engine, s, &phase, &round, &index, &chunk);
        PyObject *t = Py_BuildValue("(iLLL)", phase, (long long)round, (long long)index, (long long)chunk);
        if (t == NULL) {
            Py_DECREF(out);
            return NULL;
        }
        PyList_SET_ITEM(out, (Py_ssize_t)s, t);
    }
    return out;
}

PyDoc_STRVAR(now_doc, "now() -> float\n--\n\nThe engine's clock (CLOCK_MONOTONIC, as time.monotonic()).");

static PyObject *Engine_now(PyObject *cls, PyObject *unused)
{
    (void)cls;
    (void)unused;
    return PyFloat_FromDouble(na_engine_now());
}

static PyMethodDef Engine_methods[] = {
    {"add", (PyCFunction)Engine_add, METH_VARARGS, add_doc},
    {"step", (PyCFunction)Engine_step, METH_O, step_doc},
    {"notify", (PyCFunction)Engine_notify, METH_NOARGS, notify_doc},
    {"stats", (PyCFunction)Engine_stats, METH_NOARGS, stats_doc},
    {"op_state", (PyCFunction)Engine_op_state, METH_O, op_state_doc},
    {"slots", (PyCFunction)Engine_slots, METH_NOARGS, slots_doc},
    {"now", (PyCFunction)Engine_now, METH_NOARGS | METH_STATIC, now_doc},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject EngineType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "netagg.host_agent._native.Engine",
    .tp_doc = PyDoc_STR("The transport's data path in C (host_agent/native/engine.h)."),
    .tp_basicsize = sizeof(EngineObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Engine_init,
    .tp_dealloc = (destructor)Engine_dealloc,
    .tp_methods = Engine_methods,
};

int na_add_engine_type(PyObject *module)
{
    if (PyType_Ready(&EngineType) < 0)
        return -1;
    return PyModule_AddObjectRef(module, "Engine", (PyObject *)&EngineType);
}
