/* Native splice (_native_splice.c): the byte path of a blind tunnel, ATS's
 * OneWayTunnel without a Python continuation per transfer.
 *
 * A pipe moves bytes from src_fd to dst_fd through a buffer; an end is one
 * spliced fd, registered in epoll with ATS_SPLICE_TAG | (address of its end)
 * as its data, so that ats_net_wait pumps its pipes without returning the
 * event to Python.  Python hears of an end only when something needs it (the
 * status bits below).  A splice's ends, each with the pipe that reads it, are one
 * array that Python allocates (a bytearray, see ats_cffi/net/splice.py) and keeps while
 * their fds are registered; a pipe's buffer is native: taken from the pump's
 * thread's freelist when bytes must wait for the sink, given back as soon as the
 * pipe holds none (an idle pipe holds no buffer), and trimmed by the thread's
 * InactivityCop (ats_splice_trim).  The cop learns which ends moved bytes from a
 * per-thread list (ats_splice_moved), not from a counter per end.
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

/* 80 bytes: an idle spliced connection holds its ends and nothing else (see the .c). */
struct ats_pipe {
    int src_fd;
    int dst_fd;
    char *buf;         /* cap bytes while it holds unwritten ones, else NULL (see the .c) */
    uint32_t cap;      /* (Python bounds it: at most 64 MiB) */
    uint32_t head;     /* first byte not yet written */
    uint32_t tail;     /* one past the last byte read */
    uint32_t budget;   /* bytes read per pump at most */
    uint64_t nread;
    uint64_t nwritten;
    struct ats_splice_end *src_end;
    struct ats_splice_end *dst_end;
    _Atomic int done;  /* finished, failed or stopped: the pump does nothing more */
    int err;           /* errno of the failure, 0 if none */
    uint8_t err_on_dst;
    uint8_t src_ready; /* an edge was seen on src and no EAGAIN since */
    uint8_t dst_ready;
    uint8_t src_hup;   /* the peer hung up: a short read no longer means drained */
    uint8_t src_eof;
};

/* One spliced fd, with the pipe that reads it: a splice is an array of one end (an
 * echo: its pipe writes back to its own fd) or two (each pipe writes to the other's
 * fd), one allocation. */
struct ats_splice_end {
    struct ats_pipe pipe;  /* the pipe reading this fd */
    struct ats_pipe *out;  /* the pipe writing this fd (this end's own, or the other's) */
    uint64_t token;        /* the EventIO token Python knows this end by */
    uint32_t status;       /* status bits not yet taken by Python */
    uint32_t moved;        /* the InactivityCop period its bytes last moved in, plus one */
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
/* Python's calls on a splice, ends[0..n): end i's status bits (after pumping it, if
 * pump), which it clears; whether every pipe is done; stop every pipe (any thread);
 * give the pipes' buffers back (the splice is over: no pump runs on it any more). */
uint32_t ats_splice_take(struct ats_splice_end *ends, int i, int pump, uint64_t *ctr);
/* Set end i of ends[0..n) up (one call per end, before any pump runs): its pipe reads
 * src_fd into a buffer of cap bytes (at most budget per pump) and writes to end
 * (i+1)%n's fd, dst_fd; the edge state it starts from (src_ready, src_hup, dst_ready),
 * the error the socket's last read found after its data (err, 0: none: the pipe starts
 * failed), and the end's EventIO token.  Returns the end's epoll data: ATS_SPLICE_TAG |
 * its address. */
uint64_t ats_splice_setup(struct ats_splice_end *ends, int n, int i, int src_fd, int dst_fd,
                          uint32_t cap, uint32_t budget, int src_ready, int src_hup,
                          int dst_ready, int err, uint64_t token);
int ats_splice_finished(struct ats_splice_end *ends, int n);
void ats_splice_stop(struct ats_splice_end *ends, int n);
/* Stop every pipe, as ats_splice_stop, and report them in one call: out[2i] and
 * out[2i+1] get pipe i's nread and nwritten.  Returns 0 if no pipe failed, else the
 * first failed pipe's err, with in bits 32.. the index of the end whose fd failed (its
 * source's, or its sink's if err_on_dst). */
int64_t ats_splice_stop_report(struct ats_splice_end *ends, int n, uint64_t *out);
void ats_splice_release(struct ats_splice_end *ends, int n);
int ats_net_wait(int epfd, struct epoll_event *evs, int maxevents, int timeout,
                 uint64_t *tokens, uint32_t *masks, uint64_t *notify, int *nnotify,
                 uint64_t *ctr);

/* The calling thread's pipe buffers (its freelist, and the scratch its pumps read
 * into while a pipe holds nothing).  ats_splice_trim, at each InactivityCop run,
 * frees what was not needed since the previous run; ats_splice_free_all frees all
 * of it (the thread's NetHandler closes).  The two others are for tests: the
 * freelist's length, and the scratch's size (0: none). */
void ats_splice_trim(void);
/* The tokens of the ends whose bytes moved since the last call (*tokens, valid until
 * the thread's next pump), each once; the return value counts them.  The InactivityCop
 * pushes their VCs' inactivity deadlines. */
size_t ats_splice_moved(uint64_t **tokens);
void ats_splice_free_all(void);
int ats_splice_free_buffers(void);
size_t ats_splice_scratch_size(void);
