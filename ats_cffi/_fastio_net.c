/* ats_cffi._fastio's calls of a NetHandler pass (included by _fastio.c, whose
 * argument helpers they use): the wait (net_wait), the deferred registrations
 * issued before it (epoll_add_all), its events turned into EventIOs
 * (ready_events), and a listening socket's backlog taken (accept_batch).  Each is one
 * call per pass where the pass crossed into C once per event, registration or
 * connection. */

/* A buffer argument of at least need bytes (PyBUF_SIMPLE): 0, or -1 with an
 * exception set naming the call and the argument. */
static int arg_buffer(PyObject *obj, Py_buffer *view, Py_ssize_t need, const char *call,
                      const char *name)
{
    if (PyObject_GetBuffer(obj, view, PyBUF_SIMPLE) < 0) {
        PyErr_Format(PyExc_TypeError, "%s: %s must be a buffer, not %.100s", call, name,
                     Py_TYPE(obj)->tp_name);
        return -1;
    }
    if (view->len < need) {
        PyErr_Format(PyExc_ValueError, "%s: %s holds %zd bytes, not %zd", call, name,
                     view->len, need);
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

/* Fill out (a list of 2 * n slots) with [eio, mask, ...] for the events whose
 * token is its slot's current one; returns how many items. */
static Py_ssize_t ready_items(const uint64_t *tokens, const uint32_t *masks, Py_ssize_t n,
                              PyObject *slots, const uint64_t *slot_tokens, Py_ssize_t nslots,
                              PyObject *out)
{
    Py_ssize_t k = 0;
    if (nslots > PyList_GET_SIZE(slots))
        nslots = PyList_GET_SIZE(slots);
    for (Py_ssize_t i = 0; i < n; i++) {
        uint64_t token = tokens[i];
        uint64_t slot = token & 0xFFFFFFFFu;
        if (slot >= (uint64_t)nslots || slot_tokens[slot] != token)
            continue; /* stopped after the kernel queued the event */
        PyObject *eio = PyList_GET_ITEM(slots, slot);
        PyObject *mask = PyLong_FromUnsignedLong(masks[i]);
        if (mask == NULL)
            return -1;
        Py_INCREF(eio);
        PyList_SET_ITEM(out, k, eio);
        PyList_SET_ITEM(out, k + 1, mask);
        k += 2;
    }
    return k;
}

/* ready_events(tokens, masks, n, slots, slot_tokens) -> [eio, mask, ...]: a
 * NetHandler pass's events (the first n of the uint64 tokens and uint32 masks
 * of the last epoll_wait) whose token is still registered in the
 * PollDescriptor's table (net/poll.py: slot = the token's low 32 bits, valid
 * while slot_tokens[slot] == token), in one call per pass, with no int made
 * per event for its token. */
static PyObject *fast_ready_events(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    static const char call[] = "ready_events";
    Py_ssize_t n = count_and_size(args, nargs, 5, 2, call);
    if (n < 0)
        return NULL;
    if (!PyList_CheckExact(args[3])) {
        return PyErr_Format(PyExc_TypeError, "%s: slots must be a list, not %.100s", call,
                            Py_TYPE(args[3])->tp_name);
    }
    Py_buffer tv, mv, sv;
    if (arg_buffer(args[0], &tv, n * 8, call, "tokens") < 0)
        return NULL;
    if (arg_buffer(args[1], &mv, n * 4, call, "masks") < 0) {
        PyBuffer_Release(&tv);
        return NULL;
    }
    if (arg_buffer(args[4], &sv, 0, call, "slot_tokens") < 0) {
        PyBuffer_Release(&tv);
        PyBuffer_Release(&mv);
        return NULL;
    }
    PyObject *out = PyList_New(2 * n);
    Py_ssize_t k = out == NULL ? -1
                               : ready_items(tv.buf, mv.buf, n, args[3], sv.buf, sv.len / 8, out);
    PyBuffer_Release(&tv);
    PyBuffer_Release(&mv);
    PyBuffer_Release(&sv);
    if (k < 0) {
        Py_XDECREF(out);
        return NULL;
    }
    Py_SET_SIZE(out, k); /* the slots past k were never filled */
    return out;
}

/* epoll_add_all(epfd, pending, failed) -> how many failed: EPOLL_CTL_ADD of each
 * item of pending, a dict fd -> (events, token, token0) (PollDescriptor.add's
 * queue), in one call; each ADD that fails appends (fd, token0, errno) to the list
 * failed.  Where the interpreted loop made a cffi call per ADD (about 3,400
 * instructions per accepted connection), a pass issues them all here. */
/* An int in 0..2**64-1 as a uint64, or -1 with an exception set. Through
 * PyLong_AsLongLongAndOverflow, which adds up the digits: PyLong_AsUnsignedLongLong goes
 * through a byte array for every value over 30 bits (each token). Only a value with bit
 * 63 set (a spliced end's tag) takes that path. */
static unsigned long long as_u64(PyObject *o)
{
    int overflow = 0;
    long long v = PyLong_AsLongLongAndOverflow(o, &overflow);
    if (overflow == 0 && v >= 0)
        return (unsigned long long)v;
    if (overflow > 0)
        return PyLong_AsUnsignedLongLong(o);
    if (!PyErr_Occurred())
        PyErr_SetString(PyExc_OverflowError, "negative");
    return (unsigned long long)-1;
}

static PyObject *fast_epoll_add_all(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    static const char call[] = "epoll_add_all";
    Py_ssize_t v[3];
    if (sizes(args, nargs, 3, call, 0, v) < 0)
        return NULL;
    Py_ssize_t epfd = v[0];
    if (!PyDict_CheckExact(args[1]) || !PyList_CheckExact(args[2]))
        return PyErr_Format(PyExc_TypeError, "%s: pending must be a dict and failed a list",
                            call);
    PyObject *key, *value;
    Py_ssize_t pos = 0, nfailed = 0;
    while (PyDict_Next(args[1], &pos, &key, &value)) {
        long fd = PyLong_Check(key) ? PyLong_AsLong(key) : -1;
        unsigned long long ev = 0, token = 0;
        if (PyTuple_CheckExact(value) && PyTuple_GET_SIZE(value) == 3) {
            ev = as_u64(PyTuple_GET_ITEM(value, 0));
            token = as_u64(PyTuple_GET_ITEM(value, 1));
        } else {
            PyErr_SetString(PyExc_TypeError, "not an (events, token, token0) tuple");
        }
        if (PyErr_Occurred() || fd < 0 || fd > INT_MAX || ev > UINT32_MAX) {
            PyErr_Clear();
            return PyErr_Format(PyExc_ValueError, "%s: a bad entry in pending (fd %R)", call,
                                key);
        }
        struct epoll_event e;
        memset(&e, 0, sizeof e);
        e.events = (uint32_t)ev;
        e.data.u64 = token;
        if (epoll_ctl((int)epfd, EPOLL_CTL_ADD, (int)fd, &e) == 0)
            continue;
        PyObject *f = Py_BuildValue("(OOi)", key, PyTuple_GET_ITEM(value, 2), errno);
        if (f == NULL || PyList_Append(args[2], f) < 0) {
            Py_XDECREF(f);
            return NULL;
        }
        Py_DECREF(f);
        nfailed++;
    }
    return PyLong_FromSsize_t(nfailed);
}

/* The NetHandler's wait (ats_net_wait, _native_splice.c), called through the
 * address that net_args carries: the cffi module keeps the one definition. */
typedef int (*net_wait_fn)(int epfd, struct epoll_event *evs, int maxevents, int timeout,
                           uint64_t *tokens, uint32_t *masks, uint64_t *notify, int *nnotify,
                           uint64_t *ctr);

#define NET_ARGS 9

/* The net_args tuples parsed before, with their values: a thread's passes hand net_wait
 * the same tuple every time (PollDescriptor.net_args, made once per epoll instance),
 * whose seven addresses took PyLong_AsUnsignedLongLong's slow path on every pass. Each
 * tuple is kept by a reference, so that no other tuple can come at its address; the
 * oldest is let go when a ninth comes. Read and written with the GIL held (a build
 * without one parses every pass: net_args_of). */
#ifndef Py_GIL_DISABLED
#define NET_ARGS_SEEN 8
static PyObject *net_args_seen[NET_ARGS_SEEN];
static uintptr_t net_args_vals[NET_ARGS_SEEN][NET_ARGS];
static unsigned net_args_next;
#endif

/* Check and convert the NET_ARGS ints of t into a: 0, or -1 with an exception set. */
static int parse_net_args(PyObject *t, uintptr_t *a, const char *call)
{
    for (int i = 0; i < NET_ARGS; i++) {
        /* Items 1 and 3 (the fd, the size) are ints >= 0, the others addresses > 0. */
        int is_int = i == 1 || i == 3;
        PyObject *o = PyTuple_GET_ITEM(t, i);
        unsigned long long v = PyLong_CheckExact(o) ? PyLong_AsUnsignedLongLong(o) : 0;
        if (v == (unsigned long long)-1 && PyErr_Occurred()) {
            PyErr_Clear(); /* negative or too large: refused below */
            v = is_int ? ULLONG_MAX : 0;
        }
        if (is_int ? v > INT_MAX : v == 0) {
            PyErr_Format(PyExc_ValueError, "%s: net_args[%d] must be %s", call, i,
                         is_int ? "an int in 0..INT_MAX" : "an address");
            return -1;
        }
        a[i] = (uintptr_t)v;
    }
    return 0;
}

/* The values of net_args t, from those seen before or parsed now (and kept): 0, or -1
 * with an exception set. */
static int net_args_of(PyObject *t, uintptr_t *a, const char *call)
{
#ifdef Py_GIL_DISABLED
    /* Without a GIL the net threads would race on the shared table: parse every pass. */
    return parse_net_args(t, a, call);
#else
    for (unsigned k = 0; k < NET_ARGS_SEEN; k++) {
        if (net_args_seen[k] == t) {
            memcpy(a, net_args_vals[k], sizeof net_args_vals[k]);
            return 0;
        }
    }
    if (parse_net_args(t, a, call) < 0)
        return -1;
    unsigned k = net_args_next++ % NET_ARGS_SEEN;
    PyObject *old = net_args_seen[k];
    Py_INCREF(t);
    net_args_seen[k] = t;
    memcpy(net_args_vals[k], a, sizeof net_args_vals[k]);
    Py_XDECREF(old);
    return 0;
#endif
}

/* net_wait(net_args, timeout_ms) -> the count of the pass's events, or -errno:
 * ats_net_wait with the GIL released (it may block up to timeout_ms), its
 * arguments the 9 ints of Epoll.net_args (the function's address, the epoll fd,
 * the events array's address, its size, then the addresses of the tokens,
 * masks, notify, nnotify and counters arrays), made once per epoll instance.
 * -EINTR (the caller waits again) once the handlers of the signal that
 * interrupted the wait have run; an exception one of them raised ends the call.
 * Where the cffi call converted seven pointers per call and two interpreted
 * methods ran around it, a pass's wait is this one call. */
static PyObject *fast_net_wait(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    static const char call[] = "net_wait";
    if (check_nargs(nargs, 2, call) < 0)
        return NULL;
    PyObject *t = args[0];
    if (!PyTuple_CheckExact(t) || PyTuple_GET_SIZE(t) != NET_ARGS) {
        return PyErr_Format(PyExc_TypeError, "%s: net_args must be a tuple of %d ints", call,
                            NET_ARGS);
    }
    uintptr_t a[NET_ARGS]; /* a copy: another thread may replace the kept values */
    if (net_args_of(t, a, call) < 0)
        return NULL;
    if (!PyLong_CheckExact(args[1])) {
        return PyErr_Format(PyExc_TypeError, "%s: timeout_ms must be an int, not %.100s", call,
                            Py_TYPE(args[1])->tp_name);
    }
    int overflow = 0;
    long timeout = PyLong_AsLongAndOverflow(args[1], &overflow);
    if (overflow || timeout < -1 || timeout > INT_MAX) {
        return PyErr_Format(PyExc_ValueError, "%s: timeout_ms must be -1 or 0..%d", call,
                            INT_MAX);
    }
    net_wait_fn fn = (net_wait_fn)a[0];
    int n;
    Py_BEGIN_ALLOW_THREADS
    n = fn((int)a[1], (struct epoll_event *)a[2], (int)a[3], (int)timeout, (uint64_t *)a[4],
           (uint32_t *)a[5], (uint64_t *)a[6], (int *)a[7], (uint64_t *)a[8]);
    Py_END_ALLOW_THREADS
    /* A signal interrupted the wait: its Python handler runs now (as the interpreter
     * runs it between bytecodes), and what it raises ends the call. */
    if (n == -EINTR && PyErr_CheckSignals() < 0)
        return NULL;
    return PyLong_FromLong(n);
}

/* accept_batch(fd, flags, nodelay, count, fds, failed) -> the errno that ended the
 * batch (EAGAIN: the backlog is empty; 0: count taken): ats_accept_batch of up to count
 * connections (1..ATS_ACCEPT_BATCH_MAX) of the non-blocking listening socket fd, their
 * fds appended to the list fds; with nodelay, each gets TCP_NODELAY and one whose
 * setsockopt failed is still taken, (fd, errno) appended to the list failed.  The GIL is
 * released around the loop (an accept thread's net threads go on meanwhile), as cffi's
 * call did; the fds come back without the cffi call's argument conversions and the
 * unpacking of its array, which cost more than the loop at a few connections a pass. */
static PyObject *fast_accept_batch(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    static const char call[] = "accept_batch";
    Py_ssize_t v[4];
    if (sizes(args, nargs, 6, call, ARG(1) | ARG(3), v) < 0)
        return NULL;
    int nodelay = arg_flag(args[2]);
    if (nodelay < 0)
        return NULL;
    Py_ssize_t count = v[3];
    if (v[1] > INT_MAX)
        return PyErr_Format(PyExc_ValueError, "%s: flags must be a C int, got %zd", call, v[1]);
    if (count < 1 || count > ATS_ACCEPT_BATCH_MAX)
        return PyErr_Format(PyExc_ValueError, "%s: count must be in 1..%d, got %zd", call,
                            ATS_ACCEPT_BATCH_MAX, count);
    PyObject *out = args[4], *failed = args[5];
    if (!PyList_CheckExact(out) || (nodelay && !PyList_CheckExact(failed)))
        return PyErr_Format(PyExc_TypeError, "%s: fds (and failed, with nodelay) must be lists",
                            call);
    int fds[ATS_ACCEPT_BATCH_MAX], errs[ATS_ACCEPT_BATCH_MAX], err, nfailed;
    int n;
    Py_ssize_t base = PyList_GET_SIZE(out);
    Py_BEGIN_ALLOW_THREADS
    n = ats_accept_batch((int)v[0], (int)v[1], nodelay, fds, errs, (int)count, &err, &nfailed);
    Py_END_ALLOW_THREADS
    for (int i = 0; i < n; i++) {
        PyObject *fd = PyLong_FromLong(fds[i]);
        if (fd == NULL || PyList_Append(out, fd) < 0) {
            Py_XDECREF(fd);
            goto fail;
        }
        Py_DECREF(fd);
        if (nodelay && errs[i]) {
            PyObject *f = Py_BuildValue("(ii)", fds[i], errs[i]);
            if (f == NULL || PyList_Append(failed, f) < 0) {
                Py_XDECREF(f);
                goto fail;
            }
            Py_DECREF(f);
        }
    }
    return PyLong_FromLong(err);
fail:
    /* Out of memory: no fd of the batch is handed over, and none is left open. */
    PyList_SetSlice(out, base, PY_SSIZE_T_MAX, NULL);
    for (int i = 0; i < n; i++)
        close(fds[i]);
    return NULL;
}
