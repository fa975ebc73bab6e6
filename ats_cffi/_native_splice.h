/* Native splice (_native_splice.c): the byte path of a blind tunnel, ATS's
 * OneWayTunnel without a Python continuation per transfer.
 *
 * A pipe moves bytes from src_fd to dst_fd through a buffer; an end is one
 * spliced fd, registered in epoll with ATS_SPLICE_TAG | (address of its end)
 * as its data, so that ats_net_wait pumps its pipes without returning the
 * event to Python.  Python hears of an end only when something needs it (the
 * status bits below).  The pipe and end structs are Python's (ffi.new, see
 * ats_cffi/net/splice.py); a pipe's buffer is native: taken from the pump's
 * thread's freelist when bytes must wait for the sink, given back as soon as the
 * pipe holds none (an idle pipe holds no buffer), and trimmed by the thread's
 * InactivityCop (ats_splice_trim).
 *
 * Threads: a pipe is pumped only on its NetHandler's thread, which alone
 * touches its fields, except `done`: any thread may stop a pipe (a close), so
 * `done` is atomic, set with ats_pipe_stop and read with ats_pipe_done.
 *
 * This header is also the cdef of the splice: build_ffi.py hands it to cffi's
 * cdef() without its #pragma and #include lines, which cdef() cannot read, so
 * the structs are written once, here.  Constants are plain literals for the
 * same reason. */
#pragma once

#include <stdint.h>
#include <stddef.h>
#include <sys/epoll.h>

/* Bit 63 of an epoll token: the rest is the address of a struct ats_splice_end. */
#define ATS_SPLICE_TAG 0x8000000000000000ULL

/* Pump status bits. */
#define ATS_SPLICE_MOVED 1u /* bytes moved */
#define ATS_SPLICE_MORE 2u  /* stopped at the budget with work left: pump again */
#define ATS_SPLICE_DONE 4u  /* a pipe finished: source EOF, all written, dst shut */
#define ATS_SPLICE_ERROR 8u /* a pipe failed: err holds the errno */

/* Per-thread counters the pumps add to: indices into ats_net_wait's ctr, an
 * array of ATS_CTR_COUNT uint64_t. */
#define ATS_CTR_READS 0
#define ATS_CTR_READ_BYTES 1
#define ATS_CTR_WRITES 2
#define ATS_CTR_WRITE_BYTES 3
#define ATS_CTR_COUNT 4

struct ats_splice_end;

struct ats_pipe {
    int src_fd;
    int dst_fd;
    char *buf;      /* cap bytes while it holds unwritten ones, else NULL (see the .c) */
    size_t cap;
    size_t head;    /* first byte not yet written */
    size_t tail;    /* one past the last byte read */
    size_t budget;  /* bytes read per pump at most */
    int src_ready;  /* an edge was seen on src and no EAGAIN since */
    int dst_ready;
    int src_hup;    /* the peer hung up: a short read no longer means drained */
    int src_eof;
    _Atomic int done; /* finished, failed or stopped: the pump does nothing more */
    int err;        /* errno of the failure, 0 if none */
    int err_on_dst;
    uint64_t nread;
    uint64_t nwritten;
    struct ats_splice_end *src_end;
    struct ats_splice_end *dst_end;
};

struct ats_splice_end {
    uint64_t token;        /* the EventIO token Python knows this end by */
    struct ats_pipe *in;   /* the pipe reading this fd, or NULL */
    struct ats_pipe *out;  /* the pipe writing this fd, or NULL */
    uint64_t activity;     /* bumped when bytes move on this fd (the InactivityCop) */
    uint32_t status;       /* status bits not yet taken by Python */
    int queued;            /* already in this pass's notify list */
};

/* Stop the pipe (any thread): once this returns, the pump starts no other
 * syscall on it; one already under way on the pump's thread may finish. */
void ats_pipe_stop(struct ats_pipe *p);
/* Nonzero once the pipe finished, failed or was stopped. */
int ats_pipe_done(struct ats_pipe *p);
/* Give the pipe's buffer back (its owner is gone: no pump can run on it any more):
 * to the calling thread's freelist if that thread pumps, else free() it. */
void ats_pipe_release(struct ats_pipe *p);
uint32_t ats_splice_end_event(struct ats_splice_end *end, uint32_t mask, uint64_t *ctr);
int ats_net_wait(int epfd, struct epoll_event *evs, int maxevents, int timeout,
                 uint64_t *tokens, uint32_t *masks, uint64_t *notify, int *nnotify,
                 uint64_t *ctr);

/* The calling thread's pipe buffers (its freelist, and the scratch its pumps read
 * into while a pipe holds nothing).  ats_splice_trim, at each InactivityCop run,
 * frees what was not needed since the previous run; ats_splice_free_all frees all
 * of it (the thread's NetHandler closes).  The two others are for tests: the
 * freelist's length, and the scratch's size (0: none). */
void ats_splice_trim(void);
void ats_splice_free_all(void);
int ats_splice_free_buffers(void);
size_t ats_splice_scratch_size(void);
