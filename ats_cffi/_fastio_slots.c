/* SlotMaker: a new instance of a class whose fields are __slots__, every named slot set in
 * one call (included by _fastio.c).
 *
 * Why: the asyncio loop's compiled call_soon and call_later (asyncio/loopcore.py) make
 * asyncio's own Handle and TimerHandle, Python classes with __slots__.  Compiled code
 * sets an attribute of such an object by name: a lookup through the type and its
 * member descriptor, about 120 instructions a field, nine fields a timer (callgrind, uvicorn
 * hello: 4,200 instructions per request).  Here the descriptors are looked up once, when
 * the maker is made, and each call stores the values at their offsets.
 *
 * slot_maker(cls, names) -> maker; maker(*values) -> a new cls, values[i] in names[i].
 * slot_runner(cls, (cancelled, context, callback, args)) -> run; run(obj): unless the
 * cancelled slot of obj (a cls) is true, callback(*args) in context (Context.run's steps:
 * PyContext_Enter, the call, PyContext_Exit); what it raises propagates.  That is
 * asyncio's Handle._run without its interpreted frame, for the loop's pass.
 * slot_heap_push / slot_heap_pop / slot_heapify: heapq's, ordered by one slot (below).
 * call_in(context, obj, name, arg): obj.name(arg) in context, Context.run's steps too.
 * The maker checks at creation that each name is a writable object slot of cls (a member
 * descriptor that cls has, from __slots__); the instance is made by cls's tp_alloc, as
 * object.__new__(cls) makes it (tracked by the GC, its other slots empty); no __init__
 * runs. */

#include <structmember.h>

#define SLOT_MAKER_MAX 16

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PyTypeObject *cls;
    Py_ssize_t n;
    Py_ssize_t offsets[SLOT_MAKER_MAX];
} SlotMaker;

static PyObject *slot_maker_call(PyObject *self_, PyObject *const *args, size_t nargsf,
                                 PyObject *kwnames)
{
    SlotMaker *self = (SlotMaker *)self_;
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (kwnames != NULL && PyTuple_GET_SIZE(kwnames)) {
        PyErr_Format(PyExc_TypeError, "slot maker of %.100s: no keyword arguments",
                     self->cls->tp_name);
        return NULL;
    }
    if (nargs != self->n) {
        PyErr_Format(PyExc_TypeError, "slot maker of %.100s: %zd positional values, not %zd",
                     self->cls->tp_name, self->n, nargs);
        return NULL;
    }
    PyObject *obj = self->cls->tp_alloc(self->cls, 0);
    if (obj == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < nargs; i++) {
        Py_INCREF(args[i]);
        *(PyObject **)((char *)obj + self->offsets[i]) = args[i];
    }
    return obj;
}

/* The value in slot i of obj (new reference), or NULL with AttributeError when empty. */
static PyObject *slot_value(SlotMaker *self, PyObject *obj, Py_ssize_t i)
{
    PyObject *v = *(PyObject **)((char *)obj + self->offsets[i]);
    if (v == NULL) {
        PyErr_Format(PyExc_AttributeError, "%.100s: slot %zd of the runner is empty",
                     Py_TYPE(obj)->tp_name, i);
        return NULL;
    }
    Py_INCREF(v);
    return v;
}

static PyObject *slot_runner_call(PyObject *self_, PyObject *const *args, size_t nargsf,
                                  PyObject *kwnames)
{
    SlotMaker *self = (SlotMaker *)self_;
    if (PyVectorcall_NARGS(nargsf) != 1 || (kwnames != NULL && PyTuple_GET_SIZE(kwnames))) {
        PyErr_SetString(PyExc_TypeError, "slot runner: one positional argument");
        return NULL;
    }
    PyObject *obj = args[0];
    if (!PyObject_TypeCheck(obj, self->cls)) {
        PyErr_Format(PyExc_TypeError, "slot runner: %.100s expected, not %.100s",
                     self->cls->tp_name, Py_TYPE(obj)->tp_name);
        return NULL;
    }
    PyObject *cancelled = slot_value(self, obj, 0);
    if (cancelled == NULL)
        return NULL;
    int skip = PyObject_IsTrue(cancelled);
    Py_DECREF(cancelled);
    if (skip)
        return skip < 0 ? NULL : Py_NewRef(Py_None);
    /* Held for the call: the callback may empty the object's slots. */
    PyObject *ctx = slot_value(self, obj, 1);
    PyObject *cb = ctx ? slot_value(self, obj, 2) : NULL;
    PyObject *cargs = cb ? slot_value(self, obj, 3) : NULL;
    PyObject *res = NULL;
    if (cargs == NULL)
        goto done;
    if (!PyContext_CheckExact(ctx) || !PyTuple_Check(cargs)) {
        PyErr_Format(PyExc_TypeError, "slot runner: a context and a tuple, not %.100s and %.100s",
                     Py_TYPE(ctx)->tp_name, Py_TYPE(cargs)->tp_name);
        goto done;
    }
    if (PyContext_Enter(ctx) < 0)
        goto done;
    res = PyObject_Vectorcall(cb, &PyTuple_GET_ITEM(cargs, 0), PyTuple_GET_SIZE(cargs), NULL);
    if (PyContext_Exit(ctx) < 0)
        Py_CLEAR(res);
done:
    Py_XDECREF(ctx);
    Py_XDECREF(cb);
    Py_XDECREF(cargs);
    if (res == NULL)
        return NULL;
    Py_DECREF(res);
    return Py_NewRef(Py_None);
}

static int slot_maker_traverse(PyObject *self_, visitproc visit, void *arg)
{
    Py_VISIT(((SlotMaker *)self_)->cls);
    return 0;
}

static void slot_maker_dealloc(PyObject *self_)
{
    PyObject_GC_UnTrack(self_);
    Py_CLEAR(((SlotMaker *)self_)->cls);
    PyObject_GC_Del(self_);
}

static PyTypeObject SlotMakerType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "ats_cffi._fastio.SlotMaker",
    .tp_basicsize = sizeof(SlotMaker),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_vectorcall_offset = offsetof(SlotMaker, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_traverse = slot_maker_traverse,
    .tp_dealloc = slot_maker_dealloc,
    .tp_doc = "a slot_maker's maker, a slot_runner's runner, or a slot heap's push, pop or"
              " heapify (_fastio_slots.c)",
};

/* The offset of slot `name` of `cls`, or -1 with the exception set. */
static Py_ssize_t slot_offset(const char *fn, PyTypeObject *cls, PyObject *name)
{
    if (!PyUnicode_Check(name)) {
        PyErr_Format(PyExc_TypeError, "%s: a name must be a str, not %.100s", fn,
                     Py_TYPE(name)->tp_name);
        return -1;
    }
    PyObject *d = PyObject_GetAttr((PyObject *)cls, name);
    if (d == NULL)
        return -1;
    Py_ssize_t off = -1;
    if (!Py_IS_TYPE(d, &PyMemberDescr_Type)
        || !PyType_IsSubtype(cls, PyDescr_TYPE(d))) {
        PyErr_Format(PyExc_ValueError, "%s: %.100s.%U is not a slot", fn, cls->tp_name,
                     name);
    } else {
        PyMemberDef *m = ((PyMemberDescrObject *)d)->d_member;
        if (m->type != T_OBJECT_EX || (m->flags & READONLY) || m->offset <= 0
            || m->offset + (Py_ssize_t)sizeof(PyObject *) > cls->tp_basicsize)
            PyErr_Format(PyExc_ValueError, "%s: %.100s.%U is not a writable slot", fn,
                         cls->tp_name, name);
        else
            off = m->offset;
    }
    Py_DECREF(d);
    return off;
}

/* A SlotMaker of args[0] (cls) and args[1] (the names), called through `call`:
 * slot_maker's and slot_runner's (see the top of this file); `want`: the count of names
 * that `call` reads (0: any, 1 to SLOT_MAKER_MAX). */
static PyObject *new_slot_object(const char *fn, PyObject *const *args, Py_ssize_t nargs,
                                 vectorcallfunc call, Py_ssize_t want)
{
    if (nargs != 2) {
        PyErr_Format(PyExc_TypeError, "%s(cls, names): 2 arguments", fn);
        return NULL;
    }
    if (!PyType_Check(args[0])) {
        PyErr_Format(PyExc_TypeError, "%s: cls must be a class, not %.100s", fn,
                     Py_TYPE(args[0])->tp_name);
        return NULL;
    }
    PyTypeObject *cls = (PyTypeObject *)args[0];
    if (cls->tp_alloc == NULL || cls->tp_new == NULL) {
        PyErr_Format(PyExc_TypeError, "%s: %.100s cannot be instantiated", fn,
                     cls->tp_name);
        return NULL;
    }
    PyObject *names = PySequence_Tuple(args[1]);
    if (names == NULL)
        return NULL;
    Py_ssize_t n = PyTuple_GET_SIZE(names);
    if (n < 1 || n > SLOT_MAKER_MAX || (want && n != want)) {
        if (want)
            PyErr_Format(PyExc_ValueError, "%s: %zd names, not %zd", fn, want, n);
        else
            PyErr_Format(PyExc_ValueError, "%s: 1 to %d names, not %zd", fn,
                         SLOT_MAKER_MAX, n);
        Py_DECREF(names);
        return NULL;
    }
    SlotMaker *self = PyObject_GC_New(SlotMaker, &SlotMakerType);
    if (self == NULL) {
        Py_DECREF(names);
        return NULL;
    }
    self->vectorcall = call;
    self->cls = NULL;
    self->n = n;
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_ssize_t off = slot_offset(fn, cls, PyTuple_GET_ITEM(names, i));
        for (Py_ssize_t j = 0; off >= 0 && j < i; j++) {
            if (self->offsets[j] == off) {
                PyErr_Format(PyExc_ValueError, "%s: %.100s.%U is named twice", fn,
                             cls->tp_name, PyTuple_GET_ITEM(names, i));
                off = -1;
            }
        }
        if (off < 0) {
            Py_DECREF(names);
            Py_DECREF(self);
            return NULL;
        }
        self->offsets[i] = off;
    }
    Py_DECREF(names);
    Py_INCREF(cls);
    self->cls = cls;
    PyObject_GC_Track((PyObject *)self);
    return (PyObject *)self;
}

/* slot_maker(cls, names) -> a maker (see the top of this file). */
static PyObject *fast_slot_maker(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    return new_slot_object("slot_maker", args, nargs, slot_maker_call, 0);
}

/* slot_runner(cls, (cancelled, context, callback, args)) -> a runner (see the top). */
static PyObject *fast_slot_runner(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    return new_slot_object("slot_runner", args, nargs, slot_runner_call, 4);
}

/* call_in(context, obj, name, arg) -> obj.name(arg) run in context (Context.run's steps),
 * without a bound method: the asyncio loop's data_received for each read (dispatch.py),
 * where Context.run of a compiled helper cost ~300 instructions more per read. */
static PyObject *fast_call_in(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4) {
        PyErr_Format(PyExc_TypeError, "call_in takes 4 arguments (%zd given)", nargs);
        return NULL;
    }
    PyObject *ctx = args[0];
    if (!PyContext_CheckExact(ctx) || !PyUnicode_CheckExact(args[2])) {
        PyErr_Format(PyExc_TypeError, "call_in: a context and a str, not %.100s and %.100s",
                     Py_TYPE(ctx)->tp_name, Py_TYPE(args[2])->tp_name);
        return NULL;
    }
    if (PyContext_Enter(ctx) < 0)
        return NULL;
    PyObject *stack[2] = {args[1], args[3]};
    PyObject *res = PyObject_VectorcallMethod(args[2], stack, 2, NULL);
    if (PyContext_Exit(ctx) < 0)
        Py_CLEAR(res);
    return res;
}

/* The heap of a slot: slot_heap_push(cls, (key,)), slot_heap_pop and slot_heapify make
 * push(heap, item), pop(heap) and heapify(heap): heapq's heappush, heappop and heapify
 * (the same binary min-heap in a list, the same sifts, so the same order), where an
 * item of exactly cls is ordered by its key slot, compared as doubles when both are
 * floats (asyncio's TimerHandle.__lt__ compares _when: an interpreted frame per
 * comparison, about 2 per uvicorn request), and anything else by its own "<".
 * Items are held while a "<" in Python runs; a heap whose size that changed raises
 * RuntimeError, as heapq does. */

/* a < b by Python's "<", both held while it runs: 1, 0, or -1 with the exception set. */
static int held_less(PyObject *a, PyObject *b)
{
    Py_INCREF(a);
    Py_INCREF(b);
    int r = PyObject_RichCompareBool(a, b, Py_LT);
    Py_DECREF(a);
    Py_DECREF(b);
    return r;
}

/* a < b for the heap: 1, 0, or -1 with the exception set. */
static int heap_less(SlotMaker *h, PyObject *a, PyObject *b)
{
    if (Py_IS_TYPE(a, h->cls) && Py_IS_TYPE(b, h->cls)) {
        PyObject *ka = *(PyObject **)((char *)a + h->offsets[0]);
        PyObject *kb = *(PyObject **)((char *)b + h->offsets[0]);
        if (ka != NULL && kb != NULL) {
            if (PyFloat_CheckExact(ka) && PyFloat_CheckExact(kb))
                return PyFloat_AS_DOUBLE(ka) < PyFloat_AS_DOUBLE(kb);
            return held_less(ka, kb);
        }
    }
    return held_less(a, b);
}

/* heap[i] < heap[j], checking that the comparison left the list as long as `size`. */
static int heap_less_at(SlotMaker *h, PyObject *heap, Py_ssize_t i, Py_ssize_t j,
                        Py_ssize_t size)
{
    int r = heap_less(h, PyList_GET_ITEM(heap, i), PyList_GET_ITEM(heap, j));
    if (r >= 0 && PyList_GET_SIZE(heap) != size) {
        PyErr_SetString(PyExc_RuntimeError, "list changed size during iteration");
        return -1;
    }
    return r;
}

static void heap_swap(PyObject *heap, Py_ssize_t i, Py_ssize_t j)
{
    PyObject **items = ((PyListObject *)heap)->ob_item;
    PyObject *t = items[i];
    items[i] = items[j];
    items[j] = t;
}

/* Move heap[pos] up towards `start` while it is less than its parent. */
static int heap_sift_down(SlotMaker *h, PyObject *heap, Py_ssize_t start, Py_ssize_t pos)
{
    Py_ssize_t size = PyList_GET_SIZE(heap);
    while (pos > start) {
        Py_ssize_t parent = (pos - 1) >> 1;
        int lt = heap_less_at(h, heap, pos, parent, size);
        if (lt < 0)
            return -1;
        if (!lt)
            break;
        heap_swap(heap, pos, parent);
        pos = parent;
    }
    return 0;
}

/* Move the smaller child up into pos down to a leaf, then the item from pos back up. */
static int heap_sift_up(SlotMaker *h, PyObject *heap, Py_ssize_t pos)
{
    Py_ssize_t size = PyList_GET_SIZE(heap), start = pos, half = size >> 1;
    while (pos < half) {
        Py_ssize_t child = 2 * pos + 1;
        if (child + 1 < size) {
            int lt = heap_less_at(h, heap, child, child + 1, size);
            if (lt < 0)
                return -1;
            if (!lt)
                child++;
        }
        heap_swap(heap, pos, child);
        pos = child;
    }
    return heap_sift_down(h, heap, start, pos);
}

static PyObject *heap_arg(PyObject *const *args, size_t nargsf, PyObject *kwnames,
                          Py_ssize_t want, const char *call)
{
    if (PyVectorcall_NARGS(nargsf) != want || (kwnames != NULL && PyTuple_GET_SIZE(kwnames))) {
        PyErr_Format(PyExc_TypeError, "%s: %zd positional argument(s)", call, want);
        return NULL;
    }
    if (!PyList_Check(args[0])) {
        PyErr_Format(PyExc_TypeError, "%s: heap must be a list, not %.100s", call,
                     Py_TYPE(args[0])->tp_name);
        return NULL;
    }
    return args[0];
}

static PyObject *slot_heap_push_call(PyObject *self_, PyObject *const *args, size_t nargsf,
                                     PyObject *kwnames)
{
    PyObject *heap = heap_arg(args, nargsf, kwnames, 2, "heap push");
    if (heap == NULL || PyList_Append(heap, args[1]) < 0)
        return NULL;
    if (heap_sift_down((SlotMaker *)self_, heap, 0, PyList_GET_SIZE(heap) - 1) < 0)
        return NULL;
    return Py_NewRef(Py_None);
}

static PyObject *slot_heap_pop_call(PyObject *self_, PyObject *const *args, size_t nargsf,
                                    PyObject *kwnames)
{
    PyObject *heap = heap_arg(args, nargsf, kwnames, 1, "heap pop");
    if (heap == NULL)
        return NULL;
    Py_ssize_t n = PyList_GET_SIZE(heap);
    if (n == 0) {
        PyErr_SetString(PyExc_IndexError, "index out of range");
        return NULL;
    }
    PyObject *last = Py_NewRef(PyList_GET_ITEM(heap, n - 1));
    if (PyList_SetSlice(heap, n - 1, n, NULL) < 0) {
        Py_DECREF(last);
        return NULL;
    }
    if (n == 1)
        return last;
    PyObject **items = ((PyListObject *)heap)->ob_item;
    PyObject *top = items[0]; /* the list's reference, handed to the caller */
    items[0] = last;
    if (heap_sift_up((SlotMaker *)self_, heap, 0) < 0) {
        Py_DECREF(top);
        return NULL;
    }
    return top;
}

static PyObject *slot_heapify_call(PyObject *self_, PyObject *const *args, size_t nargsf,
                                   PyObject *kwnames)
{
    PyObject *heap = heap_arg(args, nargsf, kwnames, 1, "heapify");
    if (heap == NULL)
        return NULL;
    for (Py_ssize_t i = (PyList_GET_SIZE(heap) >> 1) - 1; i >= 0; i--) {
        if (heap_sift_up((SlotMaker *)self_, heap, i) < 0)
            return NULL;
    }
    return Py_NewRef(Py_None);
}

static PyObject *fast_slot_heap_push(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    return new_slot_object("slot_heap_push", args, nargs, slot_heap_push_call, 1);
}

static PyObject *fast_slot_heap_pop(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    return new_slot_object("slot_heap_pop", args, nargs, slot_heap_pop_call, 1);
}

static PyObject *fast_slot_heapify(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    return new_slot_object("slot_heapify", args, nargs, slot_heapify_call, 1);
}
