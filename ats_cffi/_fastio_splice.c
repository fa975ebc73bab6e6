/* A splice's per-connection calls (net/splice.py) with the GIL held.  Through cffi each
 * of them released the GIL and took it again and converted its arguments: 800 to 2,100
 * instructions a call, for C that runs in a few dozen and makes no syscall (but a pump:
 * splice_take with pump, which still runs without the GIL, as the pumps of a wait do).
 * The functions stay the cffi module's (_native_splice.c: one definition, one per-thread
 * freelist), called through the addresses splice_bind hands over once.  The ends are
 * a bytearray the Splice keeps; the arrays the calls write are passed as addresses.
 * Included by _fastio.c, after _fastio_net.c (as_u64). */

#include "_native_splice.h"

typedef uint64_t (*splice_setup_fn)(struct ats_splice_end *, int, int, int, int, uint32_t,
                                    uint32_t, int, int, int, int, uint64_t);
typedef uint32_t (*splice_take_fn)(struct ats_splice_end *, int, int, uint64_t *);
typedef int64_t (*splice_stop_report_fn)(struct ats_splice_end *, int, uint64_t *);
typedef void (*splice_release_fn)(struct ats_splice_end *, int);
typedef int (*splice_finished_fn)(struct ats_splice_end *, int);

#define SPLICE_FNS 5
static uintptr_t splice_fns[SPLICE_FNS]; /* setup, take, stop_report, release, finished */

/* splice_bind((setup, take, stop_report, release, finished)): the functions' addresses. */
static PyObject *fast_splice_bind(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    static const char call[] = "splice_bind";
    if (check_nargs(nargs, 1, call) < 0)
        return NULL;
    PyObject *t = args[0];
    if (!PyTuple_CheckExact(t) || PyTuple_GET_SIZE(t) != SPLICE_FNS)
        return PyErr_Format(PyExc_TypeError, "%s: takes a tuple of %d addresses", call,
                            SPLICE_FNS);
    uintptr_t a[SPLICE_FNS];
    for (int i = 0; i < SPLICE_FNS; i++) {
        Py_ssize_t v = arg_size(&PyTuple_GET_ITEM(t, 0), i, call);
        if (v < 0)
            return NULL;
        if (v == 0)
            return PyErr_Format(PyExc_ValueError, "%s: address %d is 0", call, i + 1);
        a[i] = (uintptr_t)v;
    }
    memcpy(splice_fns, a, sizeof a);
    Py_RETURN_NONE;
}

/* The count or index arguments whose bits are set in mask (argument 0 is the ends), into
 * v: 0, or -1 with an exception (also before splice_bind). */
static int splice_args(PyObject *const *args, Py_ssize_t nargs, Py_ssize_t want,
                       const char *call, unsigned mask, Py_ssize_t *v)
{
    if (splice_fns[0] == 0) {
        PyErr_Format(PyExc_RuntimeError, "%s: splice_bind was not called", call);
        return -1;
    }
    if (check_nargs(nargs, want, call) < 0)
        return -1;
    for (int i = 1; i < want; i++)
        if (mask & ARG(i) && (v[i] = arg_size(args, i, call)) < 0)
            return -1;
    return 0;
}

/* The ends: a bytearray (a Splice's ``ends``) holding at least count of them, or NULL
 * with an exception. Python owns the memory (zeroed at creation, never resized). */
static struct ats_splice_end *ends_of(PyObject *o, Py_ssize_t count, const char *call)
{
    if (PyByteArray_CheckExact(o) &&
        PyByteArray_GET_SIZE(o) >= count * (Py_ssize_t)sizeof(struct ats_splice_end))
        return (struct ats_splice_end *)PyByteArray_AS_STRING(o);
    PyErr_Format(PyExc_TypeError, "%s: ends must be a bytearray of %zd ends", call, count);
    return NULL;
}

/* A splice has 1 or 2 ends: 0, or -1 with an exception. */
static int bad_ends(Py_ssize_t n, const char *call)
{
    if (n == 1 || n == 2)
        return 0;
    PyErr_Format(PyExc_ValueError, "%s: n must be 1 or 2, got %zd", call, n);
    return -1;
}

/* The arguments of a call on a whole splice (argument 1: n, its 1 or 2 ends) into v, as
 * splice_args: its ends, or NULL with an exception. */
static struct ats_splice_end *splice_n_args(PyObject *const *args, Py_ssize_t nargs,
                                            Py_ssize_t want, const char *call, unsigned mask,
                                            Py_ssize_t *v)
{
    if (splice_args(args, nargs, want, call, mask | ARG(1), v) < 0 || bad_ends(v[1], call) < 0)
        return NULL;
    return ends_of(args[0], v[1], call);
}

/* A token argument (a uint64) into *token: 0, or -1 with an exception naming the call. */
static int token_arg(PyObject *o, unsigned long long *token, const char *call)
{
    *token = as_u64(o);
    if (*token != (unsigned long long)-1 || !PyErr_Occurred())
        return 0;
    PyErr_Clear();
    PyErr_Format(PyExc_ValueError, "%s: token must be an int in 0..2**64-1", call);
    return -1;
}

/* splice_setup(ends, n, i, src_fd, dst_fd, cap, budget, src_ready, src_hup, dst_ready,
 * err, token) -> the end's epoll data (ats_splice_setup). */
static PyObject *fast_splice_setup(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    static const char call[] = "splice_setup";
    Py_ssize_t v[12];
    struct ats_splice_end *ends = splice_n_args(args, nargs, 12, call, 0x7FE, v);
    if (ends == NULL)
        return NULL;
    if (v[2] >= v[1] || v[3] > INT_MAX || v[4] > INT_MAX ||
        v[5] > UINT32_MAX || v[6] > UINT32_MAX || v[10] > INT_MAX)
        return PyErr_Format(PyExc_ValueError, "%s: an argument out of range", call);
    unsigned long long token;
    if (token_arg(args[11], &token, call) < 0)
        return NULL;
    uint64_t tag = ((splice_setup_fn)splice_fns[0])(
        ends, (int)v[1], (int)v[2], (int)v[3], (int)v[4], (uint32_t)v[5], (uint32_t)v[6],
        v[7] != 0, v[8] != 0, v[9] != 0, (int)v[10], token);
    return PyLong_FromUnsignedLongLong(tag);
}

/* splice_take(ends, i, pump, counters) -> end i's status bits (ats_splice_take). */
static PyObject *fast_splice_take(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    Py_ssize_t v[4];
    if (splice_args(args, nargs, 4, "splice_take", ARG(1) | ARG(2) | ARG(3), v) < 0)
        return NULL;
    if (v[1] > 1)
        return PyErr_Format(PyExc_ValueError, "splice_take: end %zd of 2 at most", v[1]);
    struct ats_splice_end *ends = ends_of(args[0], v[1] + 1, "splice_take");
    if (ends == NULL)
        return NULL;
    splice_take_fn take = (splice_take_fn)splice_fns[1];
    uint64_t *ctr = (uint64_t *)(uintptr_t)v[3];
    uint32_t st;
    if (v[2]) { /* a pump: reads and writes up to its budget, without the GIL as in a wait */
        Py_BEGIN_ALLOW_THREADS
        st = take(ends, (int)v[1], 1, ctr);
        Py_END_ALLOW_THREADS
    } else {
        st = take(ends, (int)v[1], 0, ctr); /* the status bits only */
    }
    return PyLong_FromUnsignedLong(st);
}

/* splice_stop_report(ends, n, out) -> the first failure (ats_splice_stop_report). */
static PyObject *fast_splice_stop_report(PyObject *mod, PyObject *const *args,
                                         Py_ssize_t nargs)
{
    Py_ssize_t v[3];
    struct ats_splice_end *ends = splice_n_args(args, nargs, 3, "splice_stop_report", ARG(2), v);
    if (ends == NULL)
        return NULL;
    int64_t failed = ((splice_stop_report_fn)splice_fns[2])(ends, (int)v[1],
                                                           (uint64_t *)(uintptr_t)v[2]);
    return PyLong_FromLongLong(failed);
}

/* splice_release(ends, n): the pipes' buffers go back (ats_splice_release). */
static PyObject *fast_splice_release(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    Py_ssize_t v[2];
    struct ats_splice_end *ends = splice_n_args(args, nargs, 2, "splice_release", 0, v);
    if (ends == NULL)
        return NULL;
    ((splice_release_fn)splice_fns[3])(ends, (int)v[1]);
    Py_RETURN_NONE;
}

/* splice_finished(ends, n) -> whether every pipe is done (ats_splice_finished). */
static PyObject *fast_splice_finished(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    Py_ssize_t v[2];
    struct ats_splice_end *ends = splice_n_args(args, nargs, 2, "splice_finished", 0, v);
    if (ends == NULL)
        return NULL;
    return PyBool_FromLong(((splice_finished_fn)splice_fns[4])(ends, (int)v[1]));
}

/* epoll_ctl(epfd, op, fd, events, token) -> 0 or -errno: epoll_ctl(2) with the GIL held
 * (it does not block), for PollDescriptor's MOD and DEL (a spliced connection's DEL). */
static PyObject *fast_epoll_ctl(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    static const char call[] = "epoll_ctl";
    Py_ssize_t v[5];
    if (sizes(args, nargs, 5, call, ARG(1) | ARG(2) | ARG(3), v) < 0)
        return NULL;
    if (v[1] > INT_MAX || v[2] > INT_MAX || v[3] > UINT32_MAX)
        return PyErr_Format(PyExc_ValueError, "%s: an argument out of range", call);
    unsigned long long token;
    if (token_arg(args[4], &token, call) < 0)
        return NULL;
    struct epoll_event e;
    memset(&e, 0, sizeof e);
    e.events = (uint32_t)v[3];
    e.data.u64 = token;
    int r = epoll_ctl((int)v[0], (int)v[1], (int)v[2], &e);
    return PyLong_FromLong(r < 0 ? -errno : 0);
}
