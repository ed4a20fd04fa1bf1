/* netagg.softswitch._native: CPython glue for the burst kernel in kernel.c and the burst I/O in io.c.
 *
 * A Kernel holds the buffers of the registers, counters and decoded tables (numpy arrays that
 * softswitch/pipeline.py and softswitch/state.py own: the P4Runtime server reads the same memory), bound once per
 * control-plane change with bind(); run() then takes one burst of frames and an output buffer per call. Every
 * buffer's element size, length and contiguity is checked here, so the kernel itself trusts its inputs.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdbool.h>
#include <string.h>

#include "io.h"
#include "kernel.h"

enum { REGISTER_BUFFERS = 8, COUNTER_BUFFERS = 6, TABLE_BUFFERS = 9 };
#define BOUND (REGISTER_BUFFERS + COUNTER_BUFFERS + TABLE_BUFFERS)
#define CONST_COUNT (sizeof(struct agg_consts) / sizeof(uint32_t))
#define JOB_GROUPS 256

typedef struct {
    PyObject_HEAD
    struct agg_consts consts;
    struct agg_tables tables;
    struct agg_registers registers;
    struct agg_counters counters;
    Py_buffer views[BOUND];
    int bound; /* views[0 .. bound) hold buffers */
} Kernel;

static void release_bound(Kernel *self)
{
    while (self->bound > 0)
        PyBuffer_Release(&self->views[--self->bound]);
    memset(&self->tables, 0, sizeof self->tables);
    memset(&self->registers, 0, sizeof self->registers);
    memset(&self->counters, 0, sizeof self->counters);
}

/* A C-contiguous buffer of `itemsize`-byte native-order elements, at least `min_items` of them. */
static int get_buffer(PyObject *obj, Py_buffer *view, bool writable, Py_ssize_t itemsize, Py_ssize_t min_items,
                      const char *what)
{
    if (PyObject_GetBuffer(obj, view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0)) < 0)
        return -1;
    const char *fmt = view->format ? view->format : "B";
    if (view->itemsize != itemsize || fmt[0] == '>' || fmt[0] == '!' || view->len / itemsize < min_items) {
        PyErr_Format(PyExc_ValueError, "%s: need a contiguous native-order array of >= %zd items of %zd bytes, "
                     "got format %s, item size %zd, %zd bytes", what, min_items, itemsize, fmt, view->itemsize,
                     view->len);
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

static int Kernel_init(Kernel *self, PyObject *args, PyObject *kwds)
{
    PyObject *consts;
    static char *kwlist[] = {"consts", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!", kwlist, &PyTuple_Type, &consts))
        return -1;
    if ((size_t)PyTuple_GET_SIZE(consts) != CONST_COUNT) {
        PyErr_Format(PyExc_ValueError, "consts: need %zu values, got %zd", CONST_COUNT, PyTuple_GET_SIZE(consts));
        return -1;
    }
    uint32_t *out = (uint32_t *)&self->consts;
    for (size_t i = 0; i < CONST_COUNT; i++) {
        unsigned long v = PyLong_AsUnsignedLong(PyTuple_GET_ITEM(consts, i));
        if (PyErr_Occurred())
            return -1;
        out[i] = (uint32_t)v;
    }
    if (self->consts.job_mcast_jobs != JOB_GROUPS) {
        PyErr_Format(PyExc_ValueError, "consts: %u job groups, this kernel is built for %d",
                     self->consts.job_mcast_jobs, JOB_GROUPS);
        return -1;
    }
    return 0;
}

static void Kernel_dealloc(Kernel *self)
{
    release_bound(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

#define ITEMS(view, type) ((size_t)((view)->len / (Py_ssize_t)sizeof(type)))

PyDoc_STRVAR(bind_doc, "bind(registers, counters, tables)\n--\n\n"
             "Bind the register arrays (epoch, bitmap, count, tsi, exp, flags, op, lanes 2-D), the counter arrays\n"
             "(drops, job_drops, job_stats: packets and bytes each, uint64) and the decoded tables (worker keys,\n"
             "workers, result keys, results, group start, group members, ingress loss, egress loss, config).");

static PyObject *Kernel_bind(Kernel *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3 || !PyTuple_Check(args[0]) || !PyTuple_Check(args[1]) || !PyTuple_Check(args[2]) ||
        PyTuple_GET_SIZE(args[0]) != REGISTER_BUFFERS || PyTuple_GET_SIZE(args[1]) != COUNTER_BUFFERS ||
        PyTuple_GET_SIZE(args[2]) != TABLE_BUFFERS) {
        PyErr_SetString(PyExc_TypeError, "bind(registers: 8-tuple, counters: 6-tuple, tables: 9-tuple)");
        return NULL;
    }
    release_bound(self);
    const struct agg_consts *k = &self->consts;
    const Py_ssize_t copies = 2 * (Py_ssize_t)k->pool_slots;
    static const Py_ssize_t reg_size[REGISTER_BUFFERS] = {4, 4, 1, 4, 1, 1, 4, 4};
    static const char *reg_name[REGISTER_BUFFERS] = {"epoch", "bitmap", "count", "tsi", "exp", "flags", "op", "lanes"};
    static const char *counter_name[COUNTER_BUFFERS] = {"drops packets", "drops bytes", "job_drops packets",
                                                        "job_drops bytes", "job_stats packets", "job_stats bytes"};
    static const Py_ssize_t table_size[TABLE_BUFFERS] = {8, 4, 4, 4, 4, 4, 4, 4, 4};
    static const char *table_name[TABLE_BUFFERS] = {"worker keys", "workers", "result keys", "results",
                                                    "group start", "group members", "ingress loss",
                                                    "egress loss", "config"};
    const Py_ssize_t table_min[TABLE_BUFFERS] = {0, 0, 0, 0, JOB_GROUPS + 1, 0, LOSS_PORTS + 1, LOSS_PORTS + 1,
                                                 CONFIG_WORDS};
    for (int i = 0; i < REGISTER_BUFFERS; i++) {
        if (get_buffer(PyTuple_GET_ITEM(args[0], i), &self->views[self->bound], true, reg_size[i], copies,
                       reg_name[i]) < 0)
            goto fail;
        self->bound++;
    }
    for (int i = 0; i < COUNTER_BUFFERS; i++) {
        if (get_buffer(PyTuple_GET_ITEM(args[1], i), &self->views[self->bound], true, 8, 0, counter_name[i]) < 0)
            goto fail;
        self->bound++;
    }
    for (int i = 0; i < TABLE_BUFFERS; i++) {
        if (get_buffer(PyTuple_GET_ITEM(args[2], i), &self->views[self->bound], false, table_size[i], table_min[i],
                       table_name[i]) < 0)
            goto fail;
        self->bound++;
    }
    Py_buffer *v = self->views;
    struct agg_registers *r = &self->registers;
    r->epoch = v[0].buf, r->bitmap = v[1].buf, r->count = v[2].buf, r->tsi = v[3].buf;
    r->exp = v[4].buf, r->flags = v[5].buf, r->op = v[6].buf, r->lanes = v[7].buf;
    r->copies = (size_t)copies;
    r->max_lanes = ITEMS(&v[7], int32_t) / (size_t)copies;
    if (r->max_lanes < (size_t)k->lanes_per_block << k->max_size_code) {
        PyErr_Format(PyExc_ValueError, "lanes: %zu lanes per copy, need %u", r->max_lanes,
                     k->lanes_per_block << k->max_size_code);
        goto fail;
    }
    v += REGISTER_BUFFERS;
    struct counter *cs[3] = {&self->counters.drops, &self->counters.job_drops, &self->counters.job_stats};
    for (int i = 0; i < 3; i++) {
        cs[i]->packets = v[2 * i].buf;
        cs[i]->bytes = v[2 * i + 1].buf;
        size_t a = ITEMS(&v[2 * i], uint64_t), b = ITEMS(&v[2 * i + 1], uint64_t);
        cs[i]->size = a < b ? a : b;
    }
    v += COUNTER_BUFFERS;
    struct agg_tables *t = &self->tables;
    t->worker_keys = v[0].buf;
    t->workers = v[1].buf;
    t->worker_count = ITEMS(&v[0], uint64_t);
    t->result_keys = v[2].buf;
    t->results = v[3].buf;
    t->result_count = ITEMS(&v[2], uint32_t);
    t->group_start = v[4].buf;
    t->group_members = v[5].buf;
    t->ingress_loss = v[6].buf;
    t->egress_loss = v[7].buf;
    t->config = v[8].buf;
    if (ITEMS(&v[1], uint32_t) < t->worker_count * WORKER_COLUMNS ||
        ITEMS(&v[3], uint32_t) < t->result_count * RESULT_COLUMNS) {
        PyErr_SetString(PyExc_ValueError, "workers/results: fewer rows than keys");
        goto fail;
    }
    for (size_t i = 1; i < t->worker_count; i++)
        if (t->worker_keys[i - 1] >= t->worker_keys[i]) {
            PyErr_SetString(PyExc_ValueError, "worker keys: not strictly increasing");
            goto fail;
        }
    for (size_t i = 1; i < t->result_count; i++)
        if (t->result_keys[i - 1] >= t->result_keys[i]) {
            PyErr_SetString(PyExc_ValueError, "result keys: not strictly increasing");
            goto fail;
        }
    size_t members = ITEMS(&v[5], int32_t) / 2;
    for (int j = 0; j < JOB_GROUPS; j++)
        if (t->group_start[j] < 0 || t->group_start[j] > t->group_start[j + 1] ||
            (size_t)t->group_start[j + 1] > members) {
            PyErr_SetString(PyExc_ValueError, "group start: not increasing within the members");
            goto fail;
        }
    Py_RETURN_NONE;
fail:
    release_bound(self);
    return NULL;
}

PyDoc_STRVAR(run_doc, "run(frames_buf, frames, first, out_buf, outs, out_count, out_used, random, random_next)\n--\n\n"
             "Run frames[first:] (int64 rows: offset in frames_buf, length, ingress port) through the aggregation\n"
             "step, appending RESULT copies to out_buf / outs (rows: offset, length, egress port) from out_count /\n"
             "out_used on. Returns (stop, consumed, out_count, out_used, random_next).");

static PyObject *Kernel_run(Kernel *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 9) {
        PyErr_SetString(PyExc_TypeError, "run() takes 9 arguments");
        return NULL;
    }
    if (self->bound != BOUND) {
        PyErr_SetString(PyExc_RuntimeError, "run() before bind()");
        return NULL;
    }
    Py_ssize_t first = PyLong_AsSsize_t(args[2]);
    Py_ssize_t out_count = PyLong_AsSsize_t(args[5]);
    Py_ssize_t out_used = PyLong_AsSsize_t(args[6]);
    Py_ssize_t random_next = PyLong_AsSsize_t(args[8]);
    if (PyErr_Occurred())
        return NULL;
    Py_buffer in, frames, out, outs, random;
    PyObject *result = NULL;
    if (PyObject_GetBuffer(args[0], &in, PyBUF_SIMPLE) < 0)
        return NULL;
    if (get_buffer(args[1], &frames, false, 8, 0, "frames") < 0)
        goto release_in;
    if (PyObject_GetBuffer(args[3], &out, PyBUF_SIMPLE | PyBUF_WRITABLE) < 0)
        goto release_frames;
    if (get_buffer(args[4], &outs, true, 8, 0, "outs") < 0)
        goto release_out;
    if (get_buffer(args[7], &random, false, 8, 0, "random") < 0)
        goto release_outs;
    struct agg_burst b = {
        .in = in.buf, .in_size = (size_t)in.len,
        .frames = frames.buf, .frame_count = ITEMS(&frames, struct frame_ref),
        .out = out.buf, .out_size = (size_t)out.len, .out_used = (size_t)out_used,
        .outs = outs.buf, .out_capacity = ITEMS(&outs, struct frame_ref), .out_count = (size_t)out_count,
        .random = random.buf, .random_count = ITEMS(&random, uint64_t), .random_next = (size_t)random_next,
    };
    if (first < 0 || out_count < 0 || out_used < 0 || random_next < 0 || (size_t)first > b.frame_count ||
        b.out_count > b.out_capacity || b.out_used > b.out_size || b.random_next > b.random_count) {
        PyErr_SetString(PyExc_ValueError, "run(): first, out_count, out_used or random_next out of range");
        goto release_random;
    }
    size_t consumed = 0;
    enum agg_stop stop = agg_burst(&self->consts, &self->tables, &self->registers, &self->counters, &b,
                                   (size_t)first, &consumed);
    result = Py_BuildValue("(innnn)", (int)stop, (Py_ssize_t)consumed, (Py_ssize_t)b.out_count,
                           (Py_ssize_t)b.out_used, (Py_ssize_t)b.random_next);
release_random:
    PyBuffer_Release(&random);
release_outs:
    PyBuffer_Release(&outs);
release_out:
    PyBuffer_Release(&out);
release_frames:
    PyBuffer_Release(&frames);
release_in:
    PyBuffer_Release(&in);
    return result;
}

static PyMethodDef Kernel_methods[] = {
    {"bind", (PyCFunction)(void (*)(void))Kernel_bind, METH_FASTCALL, bind_doc},
    {"run", (PyCFunction)(void (*)(void))Kernel_run, METH_FASTCALL, run_doc},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject KernelType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "netagg.softswitch._native.Kernel",
    .tp_doc = PyDoc_STR("Kernel(consts): the aggregation step over bursts, bound to a pipeline's arrays."),
    .tp_basicsize = sizeof(Kernel),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Kernel_init,
    .tp_dealloc = (destructor)Kernel_dealloc,
    .tp_methods = Kernel_methods,
};

/* ------------------------------------------------------------------------------------------ burst I/O */

/* A burst's buffer and rows (int64 offset, length, port) with `count` frames in `used` bytes. */
static int get_frames(PyObject *buf, PyObject *rows, Py_ssize_t count, Py_ssize_t used, bool writable,
                      Py_buffer *bv, Py_buffer *rv, struct io_frames *f)
{
    if (PyObject_GetBuffer(buf, bv, PyBUF_SIMPLE | (writable ? PyBUF_WRITABLE : 0)) < 0)
        return -1;
    if (get_buffer(rows, rv, writable, 8, 0, "rows") < 0) {
        PyBuffer_Release(bv);
        return -1;
    }
    *f = (struct io_frames){.buf = bv->buf, .size = (size_t)bv->len, .used = (size_t)used, .rows = rv->buf,
                            .capacity = ITEMS(rv, struct frame_ref), .count = (size_t)count};
    if (count < 0 || used < 0 || f->count > f->capacity || f->used > f->size) {
        PyErr_SetString(PyExc_ValueError, "count or used out of range");
        PyBuffer_Release(rv);
        PyBuffer_Release(bv);
        return -1;
    }
    if (!writable) /* frames to send: every row must lie within the buffer */
        for (size_t i = 0; i < f->count; i++) {
            const struct frame_ref *r = &f->rows[i];
            if (r->offset < 0 || r->length < 0 || (uint64_t)(r->offset + r->length) > f->size) {
                PyErr_Format(PyExc_ValueError, "row %zu lies outside the buffer", i);
                PyBuffer_Release(rv);
                PyBuffer_Release(bv);
                return -1;
            }
        }
    return 0;
}

typedef struct {
    PyObject_HEAD
    struct rx_queue q;
    struct udp_framing framing;
    bool ready;
} Receiver;

static int Receiver_init(Receiver *self, PyObject *args, PyObject *kwds)
{
    int fd, mode, filter_outgoing = 0;
    long long port;
    static char *kwlist[] = {"fd", "mode", "port", "filter_outgoing", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "iiL|p", kwlist, &fd, &mode, &port, &filter_outgoing))
        return -1;
    if (mode != IO_PACKET && mode != IO_UDP) {
        PyErr_Format(PyExc_ValueError, "mode %d: PACKET (%d) or UDP (%d)", mode, IO_PACKET, IO_UDP);
        return -1;
    }
    if (self->ready)
        rx_free(&self->q);
    self->ready = false;
    int err = rx_init(&self->q, fd, mode, port, filter_outgoing);
    if (err) {
        errno = err;
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    self->ready = true;
    return 0;
}

static void Receiver_dealloc(Receiver *self)
{
    if (self->ready)
        rx_free(&self->q);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

PyDoc_STRVAR(receive_doc, "receive(buf, rows, count, used, budget) -> (count, used)\n--\n\n"
             "Append received frames to the burst (buf, int64 rows of offset, length, port) that holds `count`\n"
             "frames in `used` bytes: the pending ones first, then those of one recvmmsg of at most `budget`.\n"
             "Never blocks; receive errors are counted in stats().");

static PyObject *Receiver_receive(Receiver *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "receive() takes 5 arguments");
        return NULL;
    }
    if (!self->ready) {
        PyErr_SetString(PyExc_RuntimeError, "Receiver not initialized");
        return NULL;
    }
    Py_ssize_t count = PyLong_AsSsize_t(args[2]), used = PyLong_AsSsize_t(args[3]);
    Py_ssize_t budget = PyLong_AsSsize_t(args[4]);
    if (PyErr_Occurred())
        return NULL;
    Py_buffer bv, rv;
    struct io_frames f;
    if (get_frames(args[0], args[1], count, used, true, &bv, &rv, &f) < 0)
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    rx_receive(&self->q, &f, budget > 0 ? (size_t)budget : 0, &self->framing);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&rv);
    PyBuffer_Release(&bv);
    return Py_BuildValue("(nn)", (Py_ssize_t)f.count, (Py_ssize_t)f.used);
}

PyDoc_STRVAR(set_framing_doc, "set_framing(mac, addr, port)\n--\n\n"
             "UDP mode: the destination MAC (6 bytes), IPv4 address and UDP port of synthesized headers.");

static PyObject *Receiver_set_framing(Receiver *self, PyObject *args)
{
    Py_buffer mac;
    unsigned long addr, port;
    if (!PyArg_ParseTuple(args, "y*kk", &mac, &addr, &port))
        return NULL;
    if (mac.len != 6 || addr > 0xFFFFFFFFul || port > 0xFFFF) {
        PyBuffer_Release(&mac);
        PyErr_SetString(PyExc_ValueError, "set_framing(mac: 6 bytes, addr: uint32, port: uint16)");
        return NULL;
    }
    memcpy(self->framing.mac, mac.buf, 6);
    self->framing.addr = (uint32_t)addr;
    self->framing.port = (uint32_t)port;
    PyBuffer_Release(&mac);
    Py_RETURN_NONE;
}

static PyObject *Receiver_pending(Receiver *self, PyObject *Py_UNUSED(ignored))
{
    return PyBool_FromLong(self->ready && rx_pending(&self->q));
}

static PyObject *Receiver_stats(Receiver *self, PyObject *Py_UNUSED(ignored))
{
    const struct rx_stats *s = &self->q.stats;
    return Py_BuildValue("(KKKKKi)", (unsigned long long)s->frames, (unsigned long long)s->gso_frames,
                         (unsigned long long)s->truncated, (unsigned long long)s->unsplit,
                         (unsigned long long)s->errors, s->last_error);
}

static PyMethodDef Receiver_methods[] = {
    {"receive", (PyCFunction)(void (*)(void))Receiver_receive, METH_FASTCALL, receive_doc},
    {"set_framing", (PyCFunction)Receiver_set_framing, METH_VARARGS, set_framing_doc},
    {"pending", (PyCFunction)Receiver_pending, METH_NOARGS, "Whether received frames wait for the next call."},
    {"stats", (PyCFunction)Receiver_stats, METH_NOARGS,
     "(frames, gso_frames, truncated, unsplit, errors, last_errno) so far."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject ReceiverType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "netagg.softswitch._native.Receiver",
    .tp_doc = PyDoc_STR("Receiver(fd, mode, port, filter_outgoing=False): bursts from one socket by recvmmsg.\n"
                        "PACKET mode needs PACKET_VNET_HDR on the socket; the socket must outlive the Receiver."),
    .tp_basicsize = sizeof(Receiver),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Receiver_init,
    .tp_dealloc = (destructor)Receiver_dealloc,
    .tp_methods = Receiver_methods,
};

static PyObject *tx_result_tuple(const struct tx_result *r)
{
    return Py_BuildValue("(KKKi)", (unsigned long long)r->sent, (unsigned long long)r->errors,
                         (unsigned long long)r->unroutable, r->last_error);
}

PyDoc_STRVAR(send_packet_doc, "send_packet(fds, buf, rows, count) -> (sent, errors, unroutable, last_errno)\n--\n\n"
             "Send frames rows[:count] of buf, each on the packet socket fds[port] (int32, -1: no such port; the\n"
             "sockets have PACKET_VNET_HDR on), by sendmmsg per port, in order per port.");

static PyObject *send_packet(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "send_packet() takes 4 arguments");
        return NULL;
    }
    Py_ssize_t count = PyLong_AsSsize_t(args[3]);
    if (PyErr_Occurred())
        return NULL;
    Py_buffer fv, bv, rv;
    if (get_buffer(args[0], &fv, false, 4, 0, "fds") < 0)
        return NULL;
    struct io_frames f;
    if (get_frames(args[1], args[2], count, 0, false, &bv, &rv, &f) < 0) {
        PyBuffer_Release(&fv);
        return NULL;
    }
    struct tx_result r = {0};
    Py_BEGIN_ALLOW_THREADS
    tx_packet(fv.buf, ITEMS(&fv, int32_t), &f, &r);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&rv);
    PyBuffer_Release(&bv);
    PyBuffer_Release(&fv);
    return tx_result_tuple(&r);
}

PyDoc_STRVAR(send_udp_doc, "send_udp(fd, port_number, buf, rows, count) -> (sent, errors, unroutable, last_errno)\n"
             "--\n\nSend frames rows[:count] of buf that leave on port_number as IPv4/UDP from the UDP socket fd to\n"
             "their IPv4 destination and UDP destination port, by sendmmsg; the others are unroutable.");

static PyObject *send_udp(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "send_udp() takes 5 arguments");
        return NULL;
    }
    int fd = (int)PyLong_AsLong(args[0]);
    long long port_number = PyLong_AsLongLong(args[1]);
    Py_ssize_t count = PyLong_AsSsize_t(args[4]);
    if (PyErr_Occurred())
        return NULL;
    Py_buffer bv, rv;
    struct io_frames f;
    if (get_frames(args[2], args[3], count, 0, false, &bv, &rv, &f) < 0)
        return NULL;
    struct tx_result r = {0};
    Py_BEGIN_ALLOW_THREADS
    tx_udp(fd, port_number, &f, &r);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&rv);
    PyBuffer_Release(&bv);
    return tx_result_tuple(&r);
}

static PyMethodDef module_methods[] = {
    {"send_packet", (PyCFunction)(void (*)(void))send_packet, METH_FASTCALL, send_packet_doc},
    {"send_udp", (PyCFunction)(void (*)(void))send_udp, METH_FASTCALL, send_udp_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "netagg.softswitch._native",
    .m_doc = "The software switch's compiled data path: the aggregation step over bursts of frames, burst I/O.",
    .m_size = -1,
    .m_methods = module_methods,
};

PyMODINIT_FUNC PyInit__native(void)
{
    if (PyType_Ready(&KernelType) < 0 || PyType_Ready(&ReceiverType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&KernelType);
    if (PyModule_AddObject(m, "Kernel", (PyObject *)&KernelType) < 0) {
        Py_DECREF(&KernelType);
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(&ReceiverType);
    if (PyModule_AddObject(m, "Receiver", (PyObject *)&ReceiverType) < 0) {
        Py_DECREF(&ReceiverType);
        Py_DECREF(m);
        return NULL;
    }
    PyModule_AddIntConstant(m, "IO_PACKET", IO_PACKET);
    PyModule_AddIntConstant(m, "IO_UDP", IO_UDP);
    PyModule_AddIntConstant(m, "IO_BATCH", IO_BATCH);
    /* The byte offsets kernel.c parses, for the test that compares them with netagg/wire.py. */
    PyObject *layout = Py_BuildValue(
        "{si si si si si si si si si si si si si si si si si si si}", "ethertype", L_ETHERTYPE, "ip", L_IP,
        "ip_proto", L_IP_PROTO, "ip_src", L_IP_SRC, "ip_dst", L_IP_DST, "udp", L_UDP, "udp_dport", L_UDP_DPORT,
        "udp_length", L_UDP_LENGTH, "agg", L_AGG, "header_bytes", L_HEADER_BYTES, "lanes", L_LANES, "byte0",
        H_BYTE0, "job", H_JOB, "tsi", H_TSI, "pool_index", H_POOL_INDEX, "exp", H_EXP, "flags", H_FLAGS, "key",
        H_KEY, "op", H_OP);
    if (layout == NULL || PyModule_AddObject(m, "LAYOUT", layout) < 0) {
        Py_XDECREF(layout);
        Py_DECREF(m);
        return NULL;
    }
    PyModule_AddIntConstant(m, "DONE", AGG_DONE);
    PyModule_AddIntConstant(m, "NOT_MINE", AGG_NOT_MINE);
    PyModule_AddIntConstant(m, "OUT_FULL", AGG_OUT_FULL);
    PyModule_AddIntConstant(m, "NEED_RANDOM", AGG_NEED_RANDOM);
    PyModule_AddIntConstant(m, "WORKER_COLUMNS", WORKER_COLUMNS);
    PyModule_AddIntConstant(m, "RESULT_COLUMNS", RESULT_COLUMNS);
    PyModule_AddIntConstant(m, "CONFIG_WORDS", CONFIG_WORDS);
    PyModule_AddIntConstant(m, "LOSS_PORTS", LOSS_PORTS);
    PyModule_AddIntConstant(m, "C_AGG_SET", C_AGG_SET);
    PyModule_AddIntConstant(m, "C_AGG_MAC_HI", C_AGG_MAC_HI);
    PyModule_AddIntConstant(m, "C_AGG_MAC_LO", C_AGG_MAC_LO);
    PyModule_AddIntConstant(m, "C_AGG_ADDR", C_AGG_ADDR);
    PyModule_AddIntConstant(m, "C_INGRESS_LOSS_ON", C_INGRESS_LOSS_ON);
    PyModule_AddIntConstant(m, "C_EGRESS_LOSS_ON", C_EGRESS_LOSS_ON);
    return m;
}
