/* The native splice's pump and ats_net_wait (declared and described in
 * _native_splice.h). */
#include "_native_splice.h"
#include "_native_syscall.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/socket.h>

/* `done` is the one field another thread writes (ats_pipe_stop): a release
 * store there, an acquire load in the pump, so that a pump that sees it set
 * also sees what the stopping thread did before. */
void ats_pipe_stop(struct ats_pipe *p)
{
    atomic_store_explicit(&p->done, 1, memory_order_release);
}

int ats_pipe_done(struct ats_pipe *p)
{
    return atomic_load_explicit(&p->done, memory_order_acquire);
}

static void ats_pipe_fail(struct ats_pipe *p, int err, int on_dst)
{
    p->err = err;
    p->err_on_dst = on_dst;
    ats_pipe_stop(p);
}

/* ------------------------------------------------------------ per-thread buffers
 *
 * An idle spliced connection must hold no buffer: a pipe's buffer goes back to
 * its thread's freelist as soon as the pipe holds no unwritten byte (at the end
 * of each pump), and comes from it again at the next read that needs one.  Most
 * reads need none: while a pipe holds nothing, it reads into the thread's
 * scratch buffer and sends from there at once; only what the sink does not take
 * is copied into a buffer of its own (back-pressure).  The freelist and the
 * scratch are the thread's own (only its pumps touch them): no lock.  A buffer
 * is reused only for a pipe of the same cap. */

#define ATS_POOL_MAX 16            /* buffers kept per thread at most */
#define ATS_POOL_BYTES (2u << 20)  /* and bytes: over either bound, free() */
#define ATS_SCRATCH_MAX (1u << 20) /* larger caps read into a buffer of their own */

struct ats_pool_buf {
    char *ptr;
    size_t cap;
    unsigned trim; /* the trim period it was given back in */
};

struct ats_pool {
    struct ats_pool_buf b[ATS_POOL_MAX];
    int n;
    size_t bytes;
    unsigned trim;      /* the current trim period (bumped by each ats_splice_trim) */
    int active;         /* a pump ran here: a released buffer may be kept */
    char *scratch;
    size_t scratch_cap;
    int scratch_used;   /* since the last trim */
    uint64_t *moved;    /* the tokens of the ends whose bytes moved (ats_splice_moved) */
    size_t nmoved;
    size_t moved_cap;
    uint32_t period;    /* bumped by each ats_splice_moved: an end is listed once per period */
};

static __thread struct ats_pool ats_pool;

/* A buffer of cap bytes: the most recently given back of that cap, else malloc. */
static char *ats_buf_take(size_t cap)
{
    struct ats_pool *pl = &ats_pool;
    pl->active = 1;
    for (int i = pl->n - 1; i >= 0; i--) {
        if (pl->b[i].cap != cap)
            continue;
        char *buf = pl->b[i].ptr;
        pl->bytes -= cap;
        pl->n--; /* the others keep their order: the most recent on top (warm in cache) */
        memmove(&pl->b[i], &pl->b[i + 1], (size_t)(pl->n - i) * sizeof pl->b[0]);
        return buf;
    }
    return malloc(cap);
}

/* Keep buf for a next pipe of this thread, or free it over the bounds.  A thread
 * that never pumped (one that only dropped the last reference to a pipe) keeps
 * nothing: no trim would ever run there. */
static void ats_buf_give(char *buf, size_t cap)
{
    struct ats_pool *pl = &ats_pool;
    if (!pl->active || pl->n == ATS_POOL_MAX || pl->bytes + cap > ATS_POOL_BYTES) {
        free(buf);
        return;
    }
    pl->b[pl->n].ptr = buf;
    pl->b[pl->n].cap = cap;
    pl->b[pl->n].trim = pl->trim;
    pl->n++;
    pl->bytes += cap;
}

/* The thread's scratch buffer, of cap bytes at least; NULL if cap is too large for
 * one or there is no memory (the caller then reads into a buffer of the pipe's). */
static char *ats_scratch(size_t cap)
{
    struct ats_pool *pl = &ats_pool;
    if (cap > ATS_SCRATCH_MAX)
        return NULL;
    if (pl->scratch_cap < cap) { /* grows to the largest cap asked; contents do not matter */
        free(pl->scratch);
        pl->scratch = malloc(cap);
        pl->scratch_cap = pl->scratch != NULL ? cap : 0;
        if (pl->scratch == NULL)
            return NULL;
    }
    pl->active = 1;
    pl->scratch_used = 1;
    return pl->scratch;
}

/* The InactivityCop's run: free what the thread did not need for a whole period:
 * the buffers given back before the last trim and not taken since, and the scratch
 * if no read used it since.  A low-water mark, kept per buffer rather than as one
 * count, so that it stays exact when the buffers' caps differ. */
void ats_splice_trim(void)
{
    struct ats_pool *pl = &ats_pool;
    int k = 0;
    for (int i = 0; i < pl->n; i++) {
        if (pl->b[i].trim == pl->trim) {
            pl->b[k++] = pl->b[i];
        } else {
            pl->bytes -= pl->b[i].cap;
            free(pl->b[i].ptr);
        }
    }
    pl->n = k;
    pl->trim++;
    if (!pl->scratch_used) {
        free(pl->scratch);
        pl->scratch = NULL;
        pl->scratch_cap = 0;
    }
    pl->scratch_used = 0;
}

/* The thread's NetHandler closes: free everything, and keep nothing given back
 * later (a pipe released after its thread stopped pumping). */
void ats_splice_free_all(void)
{
    struct ats_pool *pl = &ats_pool;
    for (int i = 0; i < pl->n; i++)
        free(pl->b[i].ptr);
    free(pl->scratch);
    free(pl->moved);
    memset(pl, 0, sizeof *pl);
}

int ats_splice_free_buffers(void)
{
    return ats_pool.n;
}

size_t ats_splice_scratch_size(void)
{
    return ats_pool.scratch_cap;
}

/* Bytes moved on end's fd: list its token for the InactivityCop, once per period (an
 * end keeps no counter that the cop would have to visit; an idle one costs the cop
 * nothing).  With no memory to list it, the next move tries again. */
static void ats_end_moved(struct ats_splice_end *end)
{
    struct ats_pool *pl = &ats_pool;
    uint32_t mark = pl->period + 1;
    if (end->moved == mark)
        return;
    if (pl->nmoved == pl->moved_cap) {
        size_t cap = pl->moved_cap ? 2 * pl->moved_cap : 64;
        uint64_t *m = realloc(pl->moved, cap * sizeof *m);
        if (m == NULL)
            return;
        pl->moved = m;
        pl->moved_cap = cap;
    }
    pl->moved[pl->nmoved++] = end->token;
    end->moved = mark;
}

size_t ats_splice_moved(uint64_t **tokens)
{
    struct ats_pool *pl = &ats_pool;
    size_t n = pl->nmoved;
    *tokens = pl->moved;
    pl->nmoved = 0;
    pl->period++;
    if (n < pl->moved_cap / 4 && pl->moved_cap > 64) { /* a burst is over: shrink */
        uint64_t *m = realloc(pl->moved, pl->moved_cap / 2 * sizeof *m);
        if (m != NULL) {
            pl->moved = m;
            pl->moved_cap /= 2;
            *tokens = m;
        }
    }
    return n;
}

/* What one write or read step of the pump did. */
enum ats_step {
    ATS_STEP_BLOCKED,  /* the socket would block (or nothing to do): no progress */
    ATS_STEP_PROGRESS, /* progress without bytes (the source's EOF) */
    ATS_STEP_MOVED,    /* bytes moved */
    ATS_STEP_RETRY,    /* interrupted (EINTR): look at the pipe again */
    ATS_STEP_FAILED,   /* the pipe failed (ats_pipe_fail) */
};

/* A step's syscall failed with err (on dst, or on src): look again after EINTR;
 * EAGAIN means that side is not ready any more; anything else fails the pipe. */
static enum ats_step ats_pipe_step_error(struct ats_pipe *p, int err, int on_dst)
{
    if (err == EINTR)
        return ATS_STEP_RETRY;
    if (err == EAGAIN || err == EWOULDBLOCK) {
        if (on_dst)
            p->dst_ready = 0;
        else
            p->src_ready = 0;
        return ATS_STEP_BLOCKED;
    }
    ats_pipe_fail(p, err, on_dst);
    return ATS_STEP_FAILED;
}

/* One send of the buffered bytes to dst. */
static enum ats_step ats_pipe_write_step(struct ats_pipe *p, uint64_t *ctr)
{
    ssize_t r = send_nocancel(p->dst_fd, p->buf + p->head, p->tail - p->head, MSG_NOSIGNAL);
    ctr[ATS_CTR_WRITES]++;
    if (r > 0) {
        p->head += (uint32_t)r;
        p->nwritten += (uint64_t)r;
        ctr[ATS_CTR_WRITE_BYTES] += (uint64_t)r;
        ats_end_moved(p->dst_end);
        if (p->head == p->tail)
            p->head = p->tail = 0;
        else
            p->dst_ready = 0; /* short write: the socket buffer is full */
        return ATS_STEP_MOVED;
    }
    return ats_pipe_step_error(p, r < 0 ? errno : EIO, 1);
}

/* Keep the n bytes at data that dst did not take (the pipe holds no buffer: they
 * are its only unwritten bytes) in a buffer of the pipe's. */
static enum ats_step ats_pipe_keep(struct ats_pipe *p, const char *data, size_t n)
{
    p->buf = ats_buf_take(p->cap);
    if (p->buf == NULL) {
        ats_pipe_fail(p, ENOMEM, 0);
        return ATS_STEP_FAILED;
    }
    memcpy(p->buf, data, n);
    p->head = 0;
    p->tail = (uint32_t)n;
    return ATS_STEP_MOVED;
}

/* n bytes just read into the scratch (the pipe holds no buffer): send them at once,
 * and keep what dst does not take.  The stop is looked at before the send, as
 * before any syscall; a stopped or failed pipe sends nothing more: it keeps nothing
 * (as the bytes left in its buffer, these are never sent). */
static enum ats_step ats_pipe_pass_on(struct ats_pipe *p, uint64_t *ctr, const char *data,
                                      size_t n)
{
    size_t sent = 0;
    enum ats_step step = ATS_STEP_MOVED;
    if (!ats_pipe_done(p)) {
        ssize_t r = send_nocancel(p->dst_fd, data, n, MSG_NOSIGNAL);
        ctr[ATS_CTR_WRITES]++;
        if (r > 0) {
            sent = (size_t)r;
            p->nwritten += (uint64_t)r;
            ctr[ATS_CTR_WRITE_BYTES] += (uint64_t)r;
            ats_end_moved(p->dst_end);
            if (sent < n)
                p->dst_ready = 0; /* short write: the socket buffer is full */
        } else if (ats_pipe_step_error(p, r < 0 ? errno : EIO, 1) == ATS_STEP_FAILED) {
            step = ATS_STEP_FAILED; /* (EINTR, EAGAIN: the kept bytes go at the next write) */
        }
    }
    if (sent == n || step == ATS_STEP_FAILED || ats_pipe_done(p))
        return step;
    return ats_pipe_keep(p, data + sent, n - sent);
}

/* Where the next read goes: the scratch while the pipe holds no byte and dst can
 * take them at once (*scratch set), else the buffer's free space (the buffer taken
 * from the freelist if the pipe has none, compacted if bytes were written from its
 * front).  NULL: no memory (the pipe failed). */
static char *ats_pipe_read_space(struct ats_pipe *p, int *scratch)
{
    *scratch = 0;
    if (p->buf == NULL) { /* holds no byte: head == tail == 0 */
        char *s = p->dst_ready ? ats_scratch(p->cap) : NULL;
        if (s != NULL) {
            *scratch = 1;
            return s;
        }
        p->buf = ats_buf_take(p->cap);
        if (p->buf == NULL) {
            ats_pipe_fail(p, ENOMEM, 0);
            return NULL;
        }
    }
    if (p->head > 0) { /* compact: the unwritten bytes to the front */
        memmove(p->buf, p->buf + p->head, p->tail - p->head);
        p->tail -= p->head;
        p->head = 0;
    }
    return p->buf + p->tail;
}

/* One read from src (into the buffer, or the scratch, see above; the scratch's bytes
 * are then passed on at once); *got counts the bytes read this pump. */
static enum ats_step ats_pipe_read_step(struct ats_pipe *p, uint64_t *ctr, size_t *got)
{
    int scratch;
    char *space = ats_pipe_read_space(p, &scratch);
    if (space == NULL)
        return ATS_STEP_FAILED;
    size_t want = p->cap - p->tail;
    ssize_t r = read_nocancel(p->src_fd, space, want);
    ctr[ATS_CTR_READS]++;
    if (r > 0) {
        p->nread += (uint64_t)r;
        *got += (size_t)r;
        ctr[ATS_CTR_READ_BYTES] += (uint64_t)r;
        ats_end_moved(p->src_end);
        if ((size_t)r < want && !p->src_hup)
            p->src_ready = 0; /* a short read drained the socket */
        if (scratch)
            return ats_pipe_pass_on(p, ctr, space, (size_t)r);
        p->tail += (uint32_t)r;
        return ATS_STEP_MOVED;
    }
    if (r == 0) {
        p->src_eof = 1;
        return ATS_STEP_PROGRESS;
    }
    return ats_pipe_step_error(p, errno, 0);
}

/* Everything the source sent is written: pass the half-close on. */
static uint32_t ats_pipe_finish(struct ats_pipe *p)
{
    if (shutdown(p->dst_fd, SHUT_WR) < 0 && errno != ENOTCONN) {
        ats_pipe_fail(p, errno, 1);
        return ATS_SPLICE_ERROR;
    }
    ats_pipe_stop(p);
    return ATS_SPLICE_DONE;
}

/* Move bytes src -> dst until both sides would block, the buffer is full and dst
 * blocks, the source ended, or budget bytes were read.  Returns status bits. */
static uint32_t ats_pipe_pump_loop(struct ats_pipe *p, uint64_t *ctr)
{
    uint32_t st = 0;
    size_t got = 0;
    for (;;) {
        int progress = 0;
        enum ats_step step;
        /* Python stops a pipe (a close, possibly from another thread) with
         * ats_pipe_stop: look again before each syscall, so that at most the one
         * in progress moves bytes after the close returned. */
        if (ats_pipe_done(p))
            return st;
        if (p->tail > p->head && p->dst_ready) {
            step = ats_pipe_write_step(p, ctr);
            if (step == ATS_STEP_RETRY)
                continue;
            if (step == ATS_STEP_FAILED)
                return st | ATS_SPLICE_ERROR;
            if (step == ATS_STEP_MOVED) {
                st |= ATS_SPLICE_MOVED;
                progress = 1;
            }
        }
        if (p->src_eof) {
            if (p->tail == p->head)
                return st | ats_pipe_finish(p);
        } else if (p->src_ready && p->tail < p->cap) {
            if (got >= p->budget)
                return st | ATS_SPLICE_MORE;
            size_t before = got;
            step = ats_pipe_read_step(p, ctr, &got);
            if (step == ATS_STEP_RETRY)
                continue;
            if (step == ATS_STEP_FAILED) /* (a read passed on whose send failed moved bytes) */
                return st | ATS_SPLICE_ERROR | (got > before ? ATS_SPLICE_MOVED : 0);
            if (step == ATS_STEP_MOVED)
                st |= ATS_SPLICE_MOVED;
            if (step == ATS_STEP_MOVED || step == ATS_STEP_PROGRESS)
                progress = 1;
        }
        if (!progress)
            return st;
    }
}

/* A pump, then the buffer back to the freelist if it holds no unwritten byte, on
 * whichever path the pump returned: an idle pipe holds no memory. */
static uint32_t ats_pipe_pump(struct ats_pipe *p, uint64_t *ctr)
{
    uint32_t st = ats_pipe_pump_loop(p, ctr);
    if (p->buf != NULL && p->head == p->tail) {
        ats_buf_give(p->buf, p->cap);
        p->buf = NULL;
        p->head = p->tail = 0;
    }
    return st;
}

/* The owner is gone: no pump runs on the pipe any more.  Its buffer goes to the
 * calling thread's freelist (the net thread's, usually; see ats_buf_give). */
void ats_pipe_release(struct ats_pipe *p)
{
    if (p->buf != NULL)
        ats_buf_give(p->buf, p->cap);
    p->buf = NULL;
}

/* An epoll event (or, with mask 0, a kick from Python) on a spliced fd: note
 * the readiness and pump the pipes through it.  Returns status bits. */
uint32_t ats_splice_end_event(struct ats_splice_end *end, uint32_t mask, uint64_t *ctr)
{
    uint32_t st = 0;
    struct ats_pipe *in = &end->pipe;
    struct ats_pipe *out = end->out;
    if ((mask & (EPOLLIN | EPOLLERR | EPOLLHUP | EPOLLRDHUP | EPOLLPRI))) {
        in->src_ready = 1;
        if (mask & (EPOLLRDHUP | EPOLLHUP | EPOLLERR))
            in->src_hup = 1;
    }
    if (out != NULL && (mask & (EPOLLOUT | EPOLLERR | EPOLLHUP)))
        out->dst_ready = 1;
    st |= ats_pipe_pump(in, ctr);
    if (out != NULL && out != in)
        st |= ats_pipe_pump(out, ctr);
    return st;
}

uint32_t ats_splice_take(struct ats_splice_end *ends, int i, int pump, uint64_t *ctr)
{
    struct ats_splice_end *end = &ends[i];
    uint32_t st = end->status;
    if (pump)
        st |= ats_splice_end_event(end, 0, ctr);
    end->status = 0;
    end->queued = 0;
    return st;
}

uint64_t ats_splice_setup(struct ats_splice_end *ends, int n, int i, int src_fd, int dst_fd,
                          uint32_t cap, uint32_t budget, int src_ready, int src_hup,
                          int dst_ready, int err, uint64_t token)
{
    struct ats_splice_end *end = &ends[i];
    struct ats_pipe *p = &end->pipe;
    p->src_fd = src_fd;
    p->dst_fd = dst_fd;
    p->cap = cap;
    p->budget = budget;
    p->src_ready = (uint8_t)(src_ready != 0);
    p->src_hup = (uint8_t)(src_hup != 0);
    p->dst_ready = (uint8_t)(dst_ready != 0);
    p->src_end = end;
    p->dst_end = &ends[(i + 1) % n];
    p->dst_end->out = p;
    end->token = token;
    if (err) {
        p->err = err;
        ats_pipe_stop(p);
        end->status |= ATS_SPLICE_ERROR;
    }
    return ATS_SPLICE_TAG | (uint64_t)(uintptr_t)end;
}

int ats_splice_finished(struct ats_splice_end *ends, int n)
{
    for (int i = 0; i < n; i++)
        if (!ats_pipe_done(&ends[i].pipe))
            return 0;
    return 1;
}

void ats_splice_stop(struct ats_splice_end *ends, int n)
{
    for (int i = 0; i < n; i++)
        ats_pipe_stop(&ends[i].pipe);
}

int64_t ats_splice_stop_report(struct ats_splice_end *ends, int n, uint64_t *out)
{
    int64_t failed = 0;
    for (int i = 0; i < n; i++) {
        struct ats_pipe *p = &ends[i].pipe;
        ats_pipe_stop(p);
        out[2 * i] = p->nread;
        out[2 * i + 1] = p->nwritten;
        if (p->err && !failed)
            failed = (int64_t)(p->err_on_dst ? (i + 1) % n : i) << 32 | (uint32_t)p->err;
    }
    return failed;
}

void ats_splice_release(struct ats_splice_end *ends, int n)
{
    for (int i = 0; i < n; i++)
        ats_pipe_release(&ends[i].pipe);
}

/* epoll_wait for a NetHandler pass.  Events of spliced fds are handled here;
 * the others are unpacked into tokens/masks (the return value counts them).
 * The tokens of ends that need Python (status other than MOVED) go to notify,
 * *nnotify of them, each once per pass; their bits accumulate in end->status. */
int ats_net_wait(int epfd, struct epoll_event *evs, int maxevents, int timeout,
                 uint64_t *tokens, uint32_t *masks, uint64_t *notify, int *nnotify,
                 uint64_t *ctr)
{
    int n = epoll_wait_nocancel(epfd, evs, maxevents, timeout);
    int k = 0, m = 0;
    *nnotify = 0;
    if (n < 0)
        return -errno;
    for (int i = 0; i < n; i++) {
        uint64_t d = evs[i].data.u64;
        if (d & ATS_SPLICE_TAG) {
            struct ats_splice_end *end = (struct ats_splice_end *)(uintptr_t)(d & ~ATS_SPLICE_TAG);
            uint32_t st = ats_splice_end_event(end, evs[i].events, ctr) & ~ATS_SPLICE_MOVED;
            if (st) {
                end->status |= st;
                if (!end->queued) {
                    end->queued = 1;
                    notify[m++] = end->token;
                }
            }
        } else {
            tokens[k] = d;
            masks[k] = evs[i].events;
            k++;
        }
    }
    *nnotify = m;
    return k;
}
