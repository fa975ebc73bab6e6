/* ats_cffi._fastio: the per-event read and write calls of the VC path, as a
 * CPython extension module of METH_FASTCALL functions.
 *
 * Why not through cffi (a departure from DESIGN.md section 2, where the native
 * layer is cffi's): a VC's read step and write step cross into C once each, and cffi
 * made each crossing cost more than the loop it calls: a tuple of the
 * arguments, a type check and conversion per pointer, and a release and
 * re-acquire of the GIL around a call that never blocks (the sockets are
 * non-blocking).  Measured with callgrind on the VIO echo, 1 KiB messages:
 * about 1,700 instructions per call, of which ats_read_spill itself took 114.
 * (An asyncio transport's write, send_left, is one such call too.)
 * Here the arguments come as an array, a block is passed as its bytearray (its
 * memory is PyByteArray_AS_STRING, with no cdata), and the GIL stays held, as
 * uvloop holds it around libuv's reads and writes.  The one call here that may
 * block, a NetHandler pass's wait (net_wait), releases the GIL; it runs the cffi
 * module's ats_net_wait through its address; accept_batch releases it too, so that
 * an accept thread's batch lets the net threads go on.
 *
 * The loops are _native_rw.c's, compiled into this module from the same source.
 * Each call leaves the result of its last syscall in a per-thread slot that
 * last() returns (the cffi calls' ssize_t *last): the callers read it only
 * when the count moved does not tell them enough. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "_native_rw.c"
#include "_native_syscall.h"

#include <stdint.h>
#include <sys/epoll.h>

/* The per-thread slots below use the initial-exec TLS model: a direct %fs access,
 * where a shared object's default model calls __tls_get_addr on every access (about
 * 80 instructions per round trip of the VIO echo).  glibc keeps a static TLS surplus for
 * objects loaded by dlopen with such variables; these 16 bytes fit it. */
#define FAST_TLS _Thread_local __attribute__((tls_model("initial-exec")))

static FAST_TLS Py_ssize_t last_result = 1;

#include "_fastio_args.c"

/* read_spill(fd, base, off, len, spill, spill_len, stop_short) -> bytes read:
 * ats_read_spill into the bytearrays base[off:off+len] and spill[:spill_len].
 * len -1: to the end of base; spill_len -1: all of spill. */
static PyObject *fast_read_spill(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    static const char call[] = "read_spill";
    Py_ssize_t v[7];
    if (sizes(args, nargs, 7, call, ARG(2), v) < 0)
        return NULL;
    Py_ssize_t fd = v[0], off = v[2];
    /* Both must be bytearrays (the spill too when none of it is asked for). */
    if (arg_span(args[1], 0, 0, call, "base") == NULL
        || arg_span(args[4], 0, 0, call, "spill") == NULL)
        return NULL;
    Py_ssize_t room = PyByteArray_GET_SIZE(args[1]) - off; /* < 0: arg_span refuses off */
    Py_ssize_t len = arg_len(args, 3, call, room > 0 ? room : 0);
    if (len < 0)
        return NULL;
    Py_ssize_t spill_len = arg_len(args, 5, call, PyByteArray_GET_SIZE(args[4]));
    if (spill_len < 0)
        return NULL;
    int stop_short = arg_flag(args[6]);
    char *base = arg_span(args[1], off, len, call, "base");
    char *spill = spill_len ? arg_span(args[4], 0, spill_len, call, "spill") : NULL;
    if (stop_short < 0 || base == NULL || (spill_len && spill == NULL))
        return NULL;
    ssize_t last = 1;
    ssize_t n = ats_read_spill((int)fd, base, (size_t)off, (size_t)len, spill,
                               (size_t)spill_len, stop_short, &last);
    last_result = last;
    return count_obj(n);
}

/* read_tail(fd, base, off, stop_short) -> bytes read: read_spill with neither a spill
 * nor a length, a read into all of base from off on.  A VC's usual read step (its tail
 * block, when the last step brought less than a block): three arguments fewer to make and
 * parse than read_spill's. */
static PyObject *fast_read_tail(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    static const char call[] = "read_tail";
    Py_ssize_t v[4];
    if (sizes(args, nargs, 4, call, ARG(2), v) < 0)
        return NULL;
    Py_ssize_t off = v[2];
    char *base = arg_span(args[1], off, 0, call, "base");
    if (base == NULL)
        return NULL;
    int stop_short = arg_flag(args[3]);
    if (stop_short < 0)
        return NULL;
    ssize_t last = 1;
    ssize_t n = ats_read_spill((int)v[0], base, (size_t)off,
                               (size_t)(PyByteArray_GET_SIZE(args[1]) - off), NULL, 0,
                               stop_short, &last);
    last_result = last;
    return count_obj(n);
}

/* read_to_bytes(fd, len, stop_short, scratch) -> bytes: ats_read_fill of up to len
 * bytes, returned as a new bytes object (b"" when none was read: last() says why).
 * scratch None: straight into the new object, cut to what came (no copy: for large
 * reads); else through the bytearray scratch[:len] (len -1: all of it), then copied
 * out, which costs less than a large allocation for a small read. */
static PyObject *fast_read_to_bytes(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    static const char call[] = "read_to_bytes";
    Py_ssize_t v[4];
    if (sizes(args, nargs, 4, call, 0, v) < 0)
        return NULL;
    PyObject *scratch = args[3];
    int direct = scratch == Py_None;
    if (!direct && arg_span(scratch, 0, 0, call, "scratch") == NULL)
        return NULL;
    Py_ssize_t len = direct ? arg_size(args, 1, call)
                            : arg_len(args, 1, call, PyByteArray_GET_SIZE(scratch));
    int stop_short = len < 0 ? -1 : PyObject_IsTrue(args[2]);
    char *base = direct || stop_short < 0 ? NULL : arg_span(scratch, 0, len, call, "scratch");
    if (stop_short < 0 || (!direct && base == NULL))
        return NULL;
    PyObject *out = direct ? PyBytes_FromStringAndSize(NULL, len) : NULL;
    if (direct && out == NULL)
        return NULL;
    ssize_t last = 1;
    ssize_t n = ats_read_fill((int)v[0], direct ? PyBytes_AS_STRING(out) : base, 0,
                              (size_t)len, stop_short, &last);
    last_result = last;
    if (!direct)
        return PyBytes_FromStringAndSize(base, n);
    if (n < len && _PyBytes_Resize(&out, n) < 0)
        return NULL; /* (out is released) */
    return out;
}

/* write_left(fd, base, off, len) -> bytes left unwritten (0: all were written):
 * ats_write_all from the bytearray base[off:off+len].  The count left, not the
 * count written, so that the usual result is 0, whose int object Python keeps. */
static PyObject *fast_write_left(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    static const char call[] = "write_left";
    Py_ssize_t v[4];
    if (sizes(args, nargs, 4, call, ARG(2) | ARG(3), v) < 0)
        return NULL;
    Py_ssize_t fd = v[0], off = v[2], len = v[3];
    char *base = arg_span(args[1], off, len, call, "base");
    if (base == NULL)
        return NULL;
    ssize_t last = 1;
    ssize_t n = ats_write_all((int)fd, base, (size_t)off, (size_t)len, &last);
    last_result = last;
    return PyLong_FromSsize_t(len - n);
}

/* The IOBufferBlock fields writev_chain reads (ats_cffi/eventsystem/ioblock.py):
 * interned once, at the module's init. */
static PyObject *name_data, *name_start, *name_end, *name_next;

/* An int field of a block, >= 0, or -1 with an exception set. */
static Py_ssize_t block_int(PyObject *block, PyObject *name)
{
    PyObject *v = PyObject_GetAttr(block, name);
    if (v == NULL)
        return -1;
    Py_ssize_t n = PyLong_Check(v) ? PyLong_AsSsize_t(v) : -1;
    Py_DECREF(v);
    if (n < 0 && !PyErr_Occurred())
        PyErr_Format(PyExc_ValueError, "writev_chain: a block's %U is not an int >= 0", name);
    return n;
}

/* Fill the iovec arrays from the chain at block (its bytes from off on, then
 * each next block's from its start), towrite bytes or ATS_IOV_MAX runs at
 * most; the bytearrays are kept in held (new references).  The run count, or -1
 * with an exception set. */
static int chain_runs(PyObject *block, Py_ssize_t off, Py_ssize_t towrite, char **bases,
                      size_t *offs, size_t *lens, PyObject **held)
{
    int n = 0;
    Py_INCREF(block);
    while (block != Py_None && towrite > 0 && n < ATS_IOV_MAX) {
        Py_ssize_t end = block_int(block, name_end);
        PyObject *data = end < 0 ? NULL : PyObject_GetAttr(block, name_data);
        if (data == NULL)
            goto fail;
        if (!PyByteArray_CheckExact(data) || off > end || end > PyByteArray_GET_SIZE(data)) {
            PyErr_SetString(PyExc_ValueError, "writev_chain: a block's span is not its data's");
            Py_DECREF(data);
            goto fail;
        }
        held[n] = data;
        Py_ssize_t k = end - off < towrite ? end - off : towrite;
        bases[n] = PyByteArray_AS_STRING(data);
        offs[n] = (size_t)off;
        lens[n] = (size_t)k;
        n++;
        towrite -= k;
        PyObject *next = PyObject_GetAttr(block, name_next);
        Py_DECREF(block);
        block = next;
        if (block == NULL)
            goto fail;
        if (block != Py_None && (off = block_int(block, name_start)) < 0)
            goto fail;
    }
    Py_DECREF(block);
    return n;
fail:
    Py_XDECREF(block);
    while (n > 0)
        Py_DECREF(held[--n]);
    return -1;
}

/* writev_chain(fd, block, off, towrite) -> bytes written: the first towrite
 * bytes of a reader's chain (ats_writev_blocks over its blocks, at most
 * ATS_IOV_MAX of them), read through the blocks' own fields, where the cffi
 * path filled three cffi arrays item by item. */
static PyObject *fast_writev_chain(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    static const char call[] = "writev_chain";
    Py_ssize_t v[4];
    if (sizes(args, nargs, 4, call, ARG(2) | ARG(3), v) < 0)
        return NULL;
    Py_ssize_t fd = v[0], off = v[2], towrite = v[3];
    char *bases[ATS_IOV_MAX];
    size_t offs[ATS_IOV_MAX], lens[ATS_IOV_MAX];
    PyObject *held[ATS_IOV_MAX];
    int n = chain_runs(args[1], off, towrite, bases, offs, lens, held);
    if (n < 0)
        return NULL; /* chain_runs released what it held */
    ssize_t last = 1;
    ssize_t done = n ? ats_writev_blocks((int)fd, bases, offs, lens, n, &last) : 0;
    for (int i = 0; i < n; i++)
        Py_DECREF(held[i]);
    last_result = last;
    return count_obj(done);
}

/* The bytes of a bytes-like argument: bytes and bytearray read in place, anything
 * else through the buffer protocol (view, which the caller releases when view->obj
 * is set).  0, or -1 with a TypeError naming the call and the argument. */
static int arg_bytes(PyObject *obj, Py_buffer *view, const char **p, Py_ssize_t *n,
                     const char *call, const char *name)
{
    if (PyBytes_CheckExact(obj)) {
        *p = PyBytes_AS_STRING(obj);
        *n = PyBytes_GET_SIZE(obj);
    } else if (PyByteArray_CheckExact(obj)) {
        *p = PyByteArray_AS_STRING(obj);
        *n = PyByteArray_GET_SIZE(obj);
    } else if (PyObject_GetBuffer(obj, view, PyBUF_SIMPLE) < 0) {
        PyErr_Format(PyExc_TypeError, "%s: %s must be a bytes-like object, not %.100s", call,
                     name, Py_TYPE(obj)->tp_name);
        return -1;
    } else {
        *p = view->buf;
        *n = view->len;
    }
    return 0;
}

/* One send() (MSG_NOSIGNAL, EINTR retried) of the bytes-like args[1] to the fd
 * args[0]: the count sent, or -errno (-EAGAIN when the socket is full); *len its
 * size.  A bytes object is used as it is; another through the buffer protocol.
 * -1 - INT_MAX with an exception set for bad arguments. */
#define SEND_FAILED (-1 - (Py_ssize_t)INT_MAX)
static Py_ssize_t send_once(PyObject *const *args, Py_ssize_t nargs, const char *call,
                            Py_ssize_t *len)
{
    Py_ssize_t v[2];
    if (sizes(args, nargs, 2, call, 0, v) < 0)
        return SEND_FAILED;
    Py_buffer view = {0};
    const char *p;
    if (arg_bytes(args[1], &view, &p, len, call, "data") < 0)
        return SEND_FAILED;
    ssize_t r;
    do {
        r = send_nocancel((int)v[0], p, (size_t)*len, MSG_NOSIGNAL);
    } while (r < 0 && errno == EINTR);
    if (r < 0)
        r = -errno;
    if (view.obj != NULL)
        PyBuffer_Release(&view);
    return r;
}

/* send_some(fd, data) -> one send() of a bytes-like object: the count sent, or
 * -errno (-EAGAIN when the socket is full). */
static PyObject *fast_send_some(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    Py_ssize_t len, r = send_once(args, nargs, "send_some", &len);
    return r == SEND_FAILED ? NULL : count_obj(r);
}

/* send_left(fd, data) -> one send() of a bytes-like object: the bytes of data it
 * did not send (0: all of them, the usual result, an int object Python keeps), or
 * -errno (-EAGAIN when the socket is full). */
static PyObject *fast_send_left(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    Py_ssize_t len, r = send_once(args, nargs, "send_left", &len);
    return r == SEND_FAILED ? NULL : PyLong_FromSsize_t(r < 0 ? r : len - r);
}

/* bytes_at(data, off, n) -> bytes(data[off:off+n]) of a bytearray, in one copy
 * (IOBufferReader.read of a message that one block holds: asyncio's
 * data_received gets these). */
static PyObject *fast_bytes_at(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    static const char call[] = "bytes_at";
    if (check_nargs(nargs, 3, call) < 0)
        return NULL;
    Py_ssize_t off = arg_size(args, 1, call), n = arg_size(args, 2, call);
    if (off < 0 || n < 0)
        return NULL;
    char *base = arg_span(args[0], off, n, call, "data");
    return base == NULL ? NULL : PyBytes_FromStringAndSize(base + off, n);
}

/* put(dst, off, src) -> None: src's bytes copied into the bytearray dst at
 * off, all of them (ValueError if they do not fit), with memmove (src may be dst).
 * src is bytes or a bytearray, or else any object with the buffer protocol: what
 * MIOBuffer.write copies into a block, where a slice of the block's memoryview
 * made a slice object and two buffer views per write. */
static PyObject *fast_put(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    static const char call[] = "put";
    Py_ssize_t off = count_and_size(args, nargs, 3, 1, call);
    if (off < 0)
        return NULL;
    Py_buffer view = {0};
    const char *p;
    Py_ssize_t n;
    if (arg_bytes(args[2], &view, &p, &n, call, "src") < 0)
        return NULL;
    char *base = arg_span(args[0], off, n, call, "dst");
    if (base != NULL)
        memmove(base + off, p, (size_t)n);
    if (view.obj != NULL)
        PyBuffer_Release(&view);
    if (base == NULL)
        return NULL;
    Py_RETURN_NONE; /* the caller knows len(src): no int made for it */
}

/* close_fd(fd) -> 0 or the errno of close(2), called with the GIL held: for a socket
 * whose close cannot block (no SO_LINGER time; the caller knows), where cffi's call
 * released and took the GIL again, most of the cost of a connection's one close. */
static PyObject *fast_close_fd(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    Py_ssize_t fd[1];
    if (sizes(args, nargs, 1, "close_fd", 0, fd) < 0)
        return NULL;
    return PyLong_FromLong(close((int)fd[0]) < 0 ? errno : 0);
}

#include "_fastio_net.c"
#include "_fastio_splice.c"
#include "_fastio_slots.c"

/* last() -> the result of the calling thread's last syscall of a call above:
 * > 0 bytes moved, 0 EOF (reads), -errno. */
static PyObject *fast_last(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    if (check_nargs(nargs, 0, "last") < 0)
        return NULL;
    return PyLong_FromSsize_t(last_result);
}

/* get_ident() -> threading.get_ident(), without making an int per call: the
 * calling thread's ident is made once, kept in a per-thread slot (one int per
 * thread that ever asks, never freed), and returned again.  The mutexes and the
 * VCs' "am I on my thread" tests ask several times per event. */
static FAST_TLS PyObject *thread_ident;

static PyObject *fast_get_ident(PyObject *mod, PyObject *unused)
{
    PyObject *ident = thread_ident;
    if (ident == NULL) {
        ident = PyLong_FromUnsignedLong(PyThread_get_thread_ident());
        if (ident == NULL)
            return NULL;
        thread_ident = ident;
    }
    Py_INCREF(ident);
    return ident;
}

static PyMethodDef fastio_methods[] = {
    {"read_spill", (PyCFunction)(void (*)(void))fast_read_spill, METH_FASTCALL,
     "read_spill(fd, base, off, len, spill, spill_len, stop_short) -> bytes read"
     " (len -1: to the end of base; spill_len -1: all of spill)"},
    {"read_tail", (PyCFunction)(void (*)(void))fast_read_tail, METH_FASTCALL,
     "read_tail(fd, base, off, stop_short) -> bytes read into base[off:]"},
    {"read_to_bytes", (PyCFunction)(void (*)(void))fast_read_to_bytes, METH_FASTCALL,
     "read_to_bytes(fd, len, stop_short, scratch) -> the bytes read"},
    {"write_left", (PyCFunction)(void (*)(void))fast_write_left, METH_FASTCALL,
     "write_left(fd, base, off, len) -> bytes left unwritten (0: all written)"},
    {"last", (PyCFunction)(void (*)(void))fast_last, METH_FASTCALL,
     "last() -> the last syscall's result of this thread's last call"},
    {"writev_chain", (PyCFunction)(void (*)(void))fast_writev_chain, METH_FASTCALL,
     "writev_chain(fd, block, off, towrite) -> bytes written from a block chain"},
    {"bytes_at", (PyCFunction)(void (*)(void))fast_bytes_at, METH_FASTCALL,
     "bytes_at(data, off, n) -> bytes(data[off:off+n]) of a bytearray, one copy"},
    {"send_some", (PyCFunction)(void (*)(void))fast_send_some, METH_FASTCALL,
     "send_some(fd, data) -> one send() of a bytes-like object: the count, or -errno"},
    {"send_left", (PyCFunction)(void (*)(void))fast_send_left, METH_FASTCALL,
     "send_left(fd, data) -> one send(): the bytes not sent (0: all), or -errno"},
    {"ready_events", (PyCFunction)(void (*)(void))fast_ready_events, METH_FASTCALL,
     "ready_events(tokens, masks, n, slots, slot_tokens) -> [eio, mask, ...] of a pass"},
    {"net_wait", (PyCFunction)(void (*)(void))fast_net_wait, METH_FASTCALL,
     "net_wait(net_args, timeout_ms) -> events of a NetHandler pass, or -errno (GIL released)"},
    {"put", (PyCFunction)(void (*)(void))fast_put, METH_FASTCALL,
     "put(dst, off, src) -> None: src copied into the bytearray dst at off"},
    {"epoll_add_all", (PyCFunction)(void (*)(void))fast_epoll_add_all, METH_FASTCALL,
     "epoll_add_all(epfd, pending, failed) -> ADDs that failed (appended to failed)"},
    {"slot_maker", (PyCFunction)(void (*)(void))fast_slot_maker, METH_FASTCALL,
     "slot_maker(cls, names) -> maker; maker(*values) -> a new cls, each value in its slot"},
    {"slot_runner", (PyCFunction)(void (*)(void))fast_slot_runner, METH_FASTCALL,
     "slot_runner(cls, (cancelled, context, callback, args)) -> run; run(obj): asyncio's"
     " Handle._run of an obj of cls"},
    {"call_in", (PyCFunction)(void (*)(void))fast_call_in, METH_FASTCALL,
     "call_in(context, obj, name, arg) -> obj.name(arg), run in context"},
    {"slot_heap_push", (PyCFunction)(void (*)(void))fast_slot_heap_push, METH_FASTCALL,
     "slot_heap_push(cls, (key,)) -> push; push(heap, item): heapq.heappush, a cls by key"},
    {"slot_heap_pop", (PyCFunction)(void (*)(void))fast_slot_heap_pop, METH_FASTCALL,
     "slot_heap_pop(cls, (key,)) -> pop; pop(heap): heapq.heappop, a cls by key"},
    {"slot_heapify", (PyCFunction)(void (*)(void))fast_slot_heapify, METH_FASTCALL,
     "slot_heapify(cls, (key,)) -> heapify; heapify(heap): heapq.heapify, a cls by key"},
    {"accept_batch", (PyCFunction)(void (*)(void))fast_accept_batch, METH_FASTCALL,
     "accept_batch(fd, flags, nodelay, count, fds, failed) -> errno that ended the batch"},
    {"close_fd", (PyCFunction)(void (*)(void))fast_close_fd, METH_FASTCALL,
     "close_fd(fd) -> 0 or errno: close(2) without releasing the GIL (it must not block)"},
    {"epoll_ctl", (PyCFunction)(void (*)(void))fast_epoll_ctl, METH_FASTCALL,
     "epoll_ctl(epfd, op, fd, events, token) -> 0 or -errno, with the GIL held"},
    {"splice_bind", (PyCFunction)(void (*)(void))fast_splice_bind, METH_FASTCALL,
     "splice_bind((setup, take, stop_report, release, finished)): their addresses"},
    {"splice_setup", (PyCFunction)(void (*)(void))fast_splice_setup, METH_FASTCALL,
     "splice_setup(ends, n, i, ...) -> tag: ats_splice_setup with the GIL held"},
    {"splice_take", (PyCFunction)(void (*)(void))fast_splice_take, METH_FASTCALL,
     "splice_take(ends, i, pump, counters) -> status: ats_splice_take with the GIL held"},
    {"splice_stop_report", (PyCFunction)(void (*)(void))fast_splice_stop_report, METH_FASTCALL,
     "splice_stop_report(ends, n, out) -> failed: ats_splice_stop_report, GIL held"},
    {"splice_release", (PyCFunction)(void (*)(void))fast_splice_release, METH_FASTCALL,
     "splice_release(ends, n): ats_splice_release with the GIL held"},
    {"splice_finished", (PyCFunction)(void (*)(void))fast_splice_finished, METH_FASTCALL,
     "splice_finished(ends, n) -> bool: ats_splice_finished with the GIL held"},
    {"get_ident", fast_get_ident, METH_NOARGS,
     "get_ident() -> threading.get_ident(), the same int object each time per thread"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef fastio_module = {
    PyModuleDef_HEAD_INIT, "ats_cffi._fastio",
    "The VC path's per-event reads and writes (see _fastio.c).", -1, fastio_methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__fastio(void)
{
    name_data = PyUnicode_InternFromString("data");
    name_start = PyUnicode_InternFromString("start");
    name_end = PyUnicode_InternFromString("end");
    name_next = PyUnicode_InternFromString("next");
    if (!name_data || !name_start || !name_end || !name_next)
        return NULL;
    if (PyType_Ready(&SlotMakerType) < 0)
        return NULL;
    return PyModule_Create(&fastio_module);
}
