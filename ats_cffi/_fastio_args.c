/* How the calls of _fastio.c read their arguments (an array of objects, METH_FASTCALL)
 * and make their results: sizes read in place from exact ints, bytearray spans checked,
 * errors that name the call and the argument, and the count objects of the reads.
 * Included by _fastio.c, after Python.h. */

/* Argument i of a call, which is not an int >= 0: -1 with the exception set
 * that names the call and the argument (the cold half of arg_size). */
static Py_ssize_t __attribute__((noinline, cold))
bad_size(PyObject *const *args, int i, const char *call)
{
    if (!PyLong_Check(args[i])) {
        PyErr_Format(PyExc_TypeError, "%s: argument %d must be an int, not %.100s", call,
                     i + 1, Py_TYPE(args[i])->tp_name);
        return -1;
    }
    Py_ssize_t v = PyLong_AsSsize_t(args[i]);
    if (v >= 0)
        return v; /* an int subclass */
    if (!PyErr_Occurred())
        PyErr_Format(PyExc_ValueError, "%s: argument %d must be >= 0", call, i + 1);
    else if (PyErr_ExceptionMatches(PyExc_OverflowError)) {
        PyErr_Clear();
        PyErr_Format(PyExc_ValueError, "%s: argument %d must be >= 0 and fit a Py_ssize_t",
                     call, i + 1);
    }
    return -1;
}

/* The value of an exact int of at most one digit (30 bits: every fd, offset and length
 * of a block), read in place; -1 for any other int, which the caller converts with
 * PyLong_AsSsize_t (a call, and most of an argument's parsing). */
static inline __attribute__((always_inline)) Py_ssize_t compact_size(PyObject *o)
{
#if PY_VERSION_HEX >= 0x030C0000
    if (PyUnstable_Long_IsCompact((PyLongObject *)o))
        return PyUnstable_Long_CompactValue((PyLongObject *)o);
#else
    Py_ssize_t n = Py_SIZE(o);
    if (n == 1 || n == 0)
        return n ? (Py_ssize_t)((PyLongObject *)o)->ob_digit[0] : 0;
#endif
    return -1;
}

/* The int object of a count a call returns (the bytes a read brought): CPython keeps
 * the objects of -5..256 only, so a read of 1 KiB made a new int per call, freed as soon
 * as the compiled caller had read it (about 200 instructions per round trip of the VIO
 * echo).  A direct-mapped cache of COUNT_CACHE such objects, by the count's bits, gives
 * the same object again to the reads of one size (a stream of equal messages, full
 * blocks); another size takes the slot.  Ints are immutable, and every call here holds
 * the GIL: one cache for all threads. */
#define COUNT_CACHE 64
static PyObject *count_cache[COUNT_CACHE];

static PyObject *count_obj(Py_ssize_t n)
{
    if (n <= 256 || n >= (Py_ssize_t)1 << 30)
        return PyLong_FromSsize_t(n); /* kept by CPython, or not one digit */
    PyObject **slot = &count_cache[(n ^ (n >> 6) ^ (n >> 12)) & (COUNT_CACHE - 1)];
    PyObject *o = *slot;
    if (o != NULL && compact_size(o) == n) {
        Py_INCREF(o);
        return o;
    }
    o = PyLong_FromSsize_t(n);
    if (o != NULL) {
        Py_XDECREF(*slot);
        Py_INCREF(o);
        *slot = o;
    }
    return o;
}

/* The value of an exact int argument that is >= 0 or is -1; -2 for anything else (not an
 * exact int, below -1, or past a Py_ssize_t: no exception is left set, the callers' bad_size
 * says what is wrong with the call's name).  Inlined at each call site: the per-event calls
 * read three to five sizes, and an exact int that fits is the only case that needs to be
 * quick. */
static inline __attribute__((always_inline)) Py_ssize_t exact_size(PyObject *o)
{
    if (!PyLong_CheckExact(o))
        return -2;
    Py_ssize_t v = compact_size(o);
    if (v >= 0)
        return v;
    v = PyLong_AsSsize_t(o);
    if (v >= 0 || (v == -1 && !PyErr_Occurred()))
        return v;
    PyErr_Clear();
    return -2;
}

/* Argument i of a call as a Py_ssize_t >= 0, or -1 with an exception set. */
static inline __attribute__((always_inline)) Py_ssize_t
arg_size(PyObject *const *args, int i, const char *call)
{
    Py_ssize_t v = exact_size(args[i]);
    return v >= 0 ? v : bad_size(args, i, call);
}

/* A bytearray argument's memory, checked to hold [off, off + len); NULL with an
 * exception set otherwise. */
static inline char *arg_span(PyObject *obj, Py_ssize_t off, Py_ssize_t len, const char *call,
                      const char *name)
{
    if (!PyByteArray_CheckExact(obj)) {
        PyErr_Format(PyExc_TypeError, "%s: %s must be a bytearray, not %.100s", call, name,
                     Py_TYPE(obj)->tp_name);
        return NULL;
    }
    if (off > PyByteArray_GET_SIZE(obj) || len > PyByteArray_GET_SIZE(obj) - off) {
        PyErr_Format(PyExc_ValueError, "%s: %s holds %zd bytes, not [%zd, %zd + %zd)", call,
                     name, PyByteArray_GET_SIZE(obj), off, off, len);
        return NULL;
    }
    return PyByteArray_AS_STRING(obj);
}

static PyObject *bad_fd(const char *call, Py_ssize_t fd)
{
    return PyErr_Format(PyExc_ValueError, "%s: fd must be a file descriptor, got %zd", call, fd);
}

static inline int check_nargs(Py_ssize_t nargs, Py_ssize_t want, const char *call)
{
    if (nargs == want)
        return 0;
    PyErr_Format(PyExc_TypeError, "%s takes %zd arguments (%zd given)", call, want, nargs);
    return -1;
}

/* Check a call's argument count and read its size argument i (>= 0): the value,
 * or -1 with an exception set. */
static Py_ssize_t count_and_size(PyObject *const *args, Py_ssize_t nargs, Py_ssize_t want,
                                 int i, const char *call)
{
    if (check_nargs(nargs, want, call) < 0)
        return -1;
    return arg_size(args, i, call);
}

#define ARG(i) (1u << (i))

/* A flag argument: 1 or 0, True and False without a call; -1 with an exception set. */
static inline int arg_flag(PyObject *o)
{
    return o == Py_True ? 1 : o == Py_False ? 0 : PyObject_IsTrue(o);
}

/* Check a call's argument count, and read its fd (argument 0) and the size
 * arguments whose bits are set in mask into v[i]: 0, or -1 with an exception.
 * Inlined: want and mask are constants at every call site, so the loop unrolls
 * into one test per argument. */
static inline __attribute__((always_inline)) int sizes(PyObject *const *args, Py_ssize_t nargs, Py_ssize_t want, const char *call,
                 unsigned mask, Py_ssize_t *v)
{
    if (check_nargs(nargs, want, call) < 0)
        return -1;
    for (int i = 0; i < want; i++)
        if ((mask | ARG(0)) & ARG(i) && (v[i] = arg_size(args, i, call)) < 0)
            return -1;
    if (v[0] > INT_MAX) {
        bad_fd(call, v[0]);
        return -1;
    }
    return 0;
}

/* Length argument i of a call, which may be -1 for all the room there is (room):
 * the caller's usual length passed as a small int, whose object Python keeps, where
 * a length of 32 KiB or more would be a new int object per call.  Else as arg_size. */
static inline __attribute__((always_inline)) Py_ssize_t
arg_len(PyObject *const *args, int i, const char *call, Py_ssize_t room)
{
    Py_ssize_t v = exact_size(args[i]);
    return v >= 0 ? v : v == -1 ? room : bad_size(args, i, call);
}
