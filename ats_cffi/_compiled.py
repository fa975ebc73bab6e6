"""The modules that mypyc compiles to C at build time.

A departure from DESIGN.md section 9 (C helpers only for per-syscall loops), made for the
HTTP keep-alive goal of issue 8: perf/README.md's "Where an HTTP keep-alive request's time
goes" measured that the time is ATS's VIO/IOBuffer/signal protocol run by the interpreter.
They are the per-event and per-request path: continuations, mutexes and events, the event
thread's loop (``EThread``: each pass's timers, queues and poll step), IOBuffers and VIOs,
EventIO, the accept pass, the VC's read/write/signal path, its NetHandler and the
thread's splice driver, the app session and HTTP service, and the asyncio loop's dispatch
of its VCs' events to their transports and its most called methods (``call_soon``,
``call_later``, ``create_task``, ``_run_once``, ...). They stay plain Python source: the
source is the program, mypyc only compiles it, and ``ATS_CFFI_PURE=1`` in the environment
runs it interpreted (``ats_cffi/__init__.py``).
This file is read by ``build_ffi.py`` too, without importing the package: keep it data.
"""

MODULES = (
    "ats_cffi.eventsystem.continuation",
    "ats_cffi.eventsystem.mutex",
    "ats_cffi.eventsystem.threadcache",
    "ats_cffi.eventsystem.event",
    "ats_cffi.eventsystem.ethread",
    "ats_cffi.eventsystem.ioblock",
    "ats_cffi.eventsystem.iobuffer",
    "ats_cffi.eventsystem.iocopy",
    "ats_cffi.eventsystem.vio",
    "ats_cffi.net.eventio",
    "ats_cffi.net.poll",
    "ats_cffi.net.netvconnection",
    "ats_cffi.net.vcio",
    "ats_cffi.net.netvc",
    "ats_cffi.net.queues",
    "ats_cffi.net.nethandler",
    "ats_cffi.net.accept",
    "ats_cffi.net.accept_fast",
    "ats_cffi.net.splice",
    "ats_cffi.net.tls.sslvc",
    "ats_cffi.apps.service",
    "ats_cffi.apps.http_responses",
    "ats_cffi.apps.http_limits",
    "ats_cffi.apps.http_parser",
    "ats_cffi.apps.http",
    "ats_cffi.asyncio.dispatch",
    "ats_cffi.asyncio.transportvc",
    "ats_cffi.asyncio.loopcore",
)
