/* The native splice's pump and ats_net_wait (declared and described in
 * _native_splice.h). */
#include "_native_splice.h"

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
    ssize_t r = send(p->dst_fd, p->buf + p->head, p->tail - p->head, MSG_NOSIGNAL);
    ctr[ATS_CTR_WRITES]++;
    if (r > 0) {
        p->head += (size_t)r;
        p->nwritten += (uint64_t)r;
        ctr[ATS_CTR_WRITE_BYTES] += (uint64_t)r;
        p->dst_end->activity++;
        if (p->head == p->tail)
            p->head = p->tail = 0;
        else
            p->dst_ready = 0; /* short write: the socket buffer is full */
        return ATS_STEP_MOVED;
    }
    return ats_pipe_step_error(p, r < 0 ? errno : EIO, 1);
}

/* One read from src into the buffer's free space (made at the first read, compacted
 * when bytes were written from its front); *got counts the bytes read this pump. */
static enum ats_step ats_pipe_read_step(struct ats_pipe *p, uint64_t *ctr, size_t *got)
{
    if (p->buf == NULL) { /* first bytes: an idle splice holds no buffer */
        p->buf = malloc(p->cap);
        if (p->buf == NULL) {
            ats_pipe_fail(p, ENOMEM, 0);
            return ATS_STEP_FAILED;
        }
    }
    if (p->head > 0) { /* compact: the unwritten bytes to the front */
        memmove(p->buf, p->buf + p->head, p->tail - p->head);
        p->tail -= p->head;
        p->head = 0;
    }
    size_t want = p->cap - p->tail;
    ssize_t r = read(p->src_fd, p->buf + p->tail, want);
    ctr[ATS_CTR_READS]++;
    if (r > 0) {
        p->tail += (size_t)r;
        p->nread += (uint64_t)r;
        *got += (size_t)r;
        ctr[ATS_CTR_READ_BYTES] += (uint64_t)r;
        p->src_end->activity++;
        if ((size_t)r < want && !p->src_hup)
            p->src_ready = 0; /* a short read drained the socket */
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
static uint32_t ats_pipe_pump(struct ats_pipe *p, uint64_t *ctr)
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
            step = ats_pipe_read_step(p, ctr, &got);
            if (step == ATS_STEP_RETRY)
                continue;
            if (step == ATS_STEP_FAILED)
                return st | ATS_SPLICE_ERROR;
            if (step == ATS_STEP_MOVED)
                st |= ATS_SPLICE_MOVED;
            if (step == ATS_STEP_MOVED || step == ATS_STEP_PROGRESS)
                progress = 1;
        }
        if (!progress)
            return st;
    }
}

void ats_pipe_release(struct ats_pipe *p)
{
    free(p->buf);
    p->buf = NULL;
}

/* An epoll event (or, with mask 0, a kick from Python) on a spliced fd: note
 * the readiness and pump the pipes through it.  Returns status bits. */
uint32_t ats_splice_end_event(struct ats_splice_end *end, uint32_t mask, uint64_t *ctr)
{
    uint32_t st = 0;
    struct ats_pipe *in = end->in;
    struct ats_pipe *out = end->out;
    if (in != NULL && (mask & (EPOLLIN | EPOLLERR | EPOLLHUP | EPOLLRDHUP | EPOLLPRI))) {
        in->src_ready = 1;
        if (mask & (EPOLLRDHUP | EPOLLHUP | EPOLLERR))
            in->src_hup = 1;
    }
    if (out != NULL && (mask & (EPOLLOUT | EPOLLERR | EPOLLHUP)))
        out->dst_ready = 1;
    if (in != NULL)
        st |= ats_pipe_pump(in, ctr);
    if (out != NULL && out != in)
        st |= ats_pipe_pump(out, ctr);
    return st;
}

/* epoll_wait for a NetHandler pass.  Events of spliced fds are handled here;
 * the others are unpacked into tokens/masks (the return value counts them).
 * The tokens of ends that need Python (status other than MOVED) go to notify,
 * *nnotify of them, each once per pass; their bits accumulate in end->status. */
int ats_net_wait(int epfd, struct epoll_event *evs, int maxevents, int timeout,
                 uint64_t *tokens, uint32_t *masks, uint64_t *notify, int *nnotify,
                 uint64_t *ctr)
{
    int n = epoll_wait(epfd, evs, maxevents, timeout);
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
