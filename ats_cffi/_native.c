/* C helpers of ats_cffi._native.
 *
 * Each helper exists because the loop it holds would otherwise cross from
 * Python into C once per syscall or once per struct field (DESIGN.md
 * section 9).  They keep no state of their own (the splice's pipes and ends,
 * at the end of this file, are structs Python allocates and owns), never block
 * longer than the syscall they wrap, and report failure as -errno (or a status
 * bit) so that EAGAIN is a return value. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>

#define ATS_IOV_MAX 64

/* epoll_ctl with the event built on the C stack: safe from any thread and
 * allocates nothing on the Python side. */
static int ats_epoll_ctl(int epfd, int op, int fd, uint32_t events, uint64_t token)
{
    struct epoll_event ev;
    memset(&ev, 0, sizeof(ev));
    ev.events = events;
    ev.data.u64 = token;
    if (epoll_ctl(epfd, op, fd, &ev) < 0)
        return -errno;
    return 0;
}

/* epoll_wait, then unpack the (packed) events into two flat arrays that
 * Python reads through memoryviews: no cffi access per field per event. */
static int ats_epoll_wait(int epfd, struct epoll_event *evs, int maxevents, int timeout,
                          uint64_t *tokens, uint32_t *masks)
{
    int n = epoll_wait(epfd, evs, maxevents, timeout);
    if (n < 0)
        return -errno;
    for (int i = 0; i < n; i++) {
        tokens[i] = evs[i].data.u64;
        masks[i] = evs[i].events;
    }
    return n;
}

static int ats_eventfd_read(int fd, uint64_t *value)
{
    ssize_t r = read(fd, value, sizeof(*value));
    if (r < 0)
        return -errno;
    return r == (ssize_t)sizeof(*value) ? 0 : -EIO;
}

static int ats_eventfd_write(int fd, uint64_t value)
{
    ssize_t r = write(fd, &value, sizeof(value));
    if (r < 0)
        return -errno;
    return r == (ssize_t)sizeof(value) ? 0 : -EIO;
}

static int ats_accept4(int fd, int flags, struct sockaddr_storage *ss, socklen_t *len)
{
    *len = sizeof(*ss);
    int r = accept4(fd, (struct sockaddr *)ss, len, flags);
    return r < 0 ? -errno : r;
}

/* Accept until EAGAIN, an error, or max connections.  Returns how many fds
 * were stored; *last_err is 0 when max was reached, else the errno that
 * stopped the loop (EAGAIN when the backlog is empty). */
static int ats_accept_batch(int fd, int flags, int *fds, int max, int *last_err)
{
    int n = 0;
    *last_err = 0;
    while (n < max) {
        int r = accept4(fd, NULL, NULL, flags);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            *last_err = errno;
            break;
        }
        fds[n++] = r;
    }
    return n;
}

/* Read into base[off, off+len) until it is full, EOF, EAGAIN or an error, or,
 * with stop_short, after the first read that returns less than it asked for.
 * Returns the bytes read; *last is the result of the last read(): > 0 when
 * data was read (the space filled, or a short read with stop_short), 0 for
 * EOF, -errno otherwise. */
static ssize_t ats_read_fill(int fd, char *base, size_t off, size_t len, int stop_short,
                             ssize_t *last)
{
    size_t done = 0;
    ssize_t r = 1;
    while (done < len) {
        size_t want = len - done;
        r = read(fd, base + off + done, want);
        if (r > 0) {
            done += (size_t)r;
            if (stop_short && (size_t)r < want)
                break;
        } else if (r < 0 && errno == EINTR) {
            continue;
        } else {
            if (r < 0)
                r = -errno;
            break;
        }
    }
    *last = r;
    return (ssize_t)done;
}

/* Write base[off, off+len) until all is written, EAGAIN or an error.
 * *last is > 0 when everything was written, else -errno. */
static ssize_t ats_write_all(int fd, const char *base, size_t off, size_t len, ssize_t *last)
{
    size_t done = 0;
    ssize_t r = 1;
    while (done < len) {
        r = send(fd, base + off + done, len - done, MSG_NOSIGNAL);
        if (r > 0) {
            done += (size_t)r;
        } else if (r < 0 && errno == EINTR) {
            continue;
        } else {
            r = r < 0 ? -errno : -EIO;
            break;
        }
    }
    *last = r;
    return (ssize_t)done;
}

/* writev of n (base, off, len) blocks, ATS_IOV_MAX at a time, repeated until all
 * bytes are written, EAGAIN or an error.  Same *last convention as ats_write_all.
 * SIGPIPE is avoided by sendmsg(MSG_NOSIGNAL). */
static ssize_t ats_writev_blocks(int fd, char **bases, size_t *offs, size_t *lens, int n,
                                 ssize_t *last)
{
    struct iovec iov[ATS_IOV_MAX];
    size_t done = 0;
    ssize_t r = 1;
    int next = 0;
    while (next < n) {
        int cnt = 0;
        size_t total = 0;
        while (next < n && cnt < ATS_IOV_MAX) {
            iov[cnt].iov_base = bases[next] + offs[next];
            iov[cnt].iov_len = lens[next];
            total += lens[next];
            cnt++;
            next++;
        }
        int first = 0;
        size_t group_done = 0;
        while (group_done < total) {
            struct msghdr msg;
            memset(&msg, 0, sizeof(msg));
            msg.msg_iov = iov + first;
            msg.msg_iovlen = (size_t)(cnt - first);
            r = sendmsg(fd, &msg, MSG_NOSIGNAL);
            if (r < 0) {
                if (errno == EINTR)
                    continue;
                r = -errno;
                *last = r;
                return (ssize_t)(done + group_done);
            }
            group_done += (size_t)r;
            size_t adv = (size_t)r;
            while (first < cnt && adv >= iov[first].iov_len) {
                adv -= iov[first].iov_len;
                first++;
            }
            if (first < cnt) {
                iov[first].iov_base = (char *)iov[first].iov_base + adv;
                iov[first].iov_len -= adv;
            }
        }
        done += group_done;
    }
    *last = r;
    return (ssize_t)done;
}

/* The pending socket error (SO_ERROR), or -errno if it cannot be read. */
static int ats_so_error(int fd)
{
    int err = 0;
    socklen_t len = sizeof(err);
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
        return -errno;
    return err;
}

static int ats_sockaddr_make(int family, const char *host, int port, uint32_t flowinfo,
                             uint32_t scope_id, struct sockaddr_storage *ss, socklen_t *len)
{
    memset(ss, 0, sizeof(*ss));
    if (family == AF_INET) {
        struct sockaddr_in *sin = (struct sockaddr_in *)ss;
        sin->sin_family = AF_INET;
        sin->sin_port = htons((uint16_t)port);
        if (inet_pton(AF_INET, host, &sin->sin_addr) != 1)
            return -EINVAL;
        *len = sizeof(*sin);
        return 0;
    }
    if (family == AF_INET6) {
        struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)ss;
        sin6->sin6_family = AF_INET6;
        sin6->sin6_port = htons((uint16_t)port);
        sin6->sin6_flowinfo = htonl(flowinfo);
        sin6->sin6_scope_id = scope_id;
        if (inet_pton(AF_INET6, host, &sin6->sin6_addr) != 1)
            return -EINVAL;
        *len = sizeof(*sin6);
        return 0;
    }
    if (family == AF_UNIX) {
        struct sockaddr_un *sun = (struct sockaddr_un *)ss;
        size_t n = strlen(host);
        if (n >= sizeof(sun->sun_path))
            return -ENAMETOOLONG;
        sun->sun_family = AF_UNIX;
        memcpy(sun->sun_path, host, n + 1);
        *len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n + 1);
        return 0;
    }
    return -EAFNOSUPPORT;
}

/* Returns the family and fills host/port (and flowinfo/scope for IPv6);
 * for AF_UNIX, host is the path.  -EAFNOSUPPORT for other families. */
static int ats_sockaddr_parse(const struct sockaddr_storage *ss, socklen_t len, char *host,
                              size_t hostlen, int *port, uint32_t *flowinfo, uint32_t *scope_id)
{
    host[0] = '\0';
    *port = 0;
    *flowinfo = 0;
    *scope_id = 0;
    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *sin = (const struct sockaddr_in *)ss;
        if (!inet_ntop(AF_INET, &sin->sin_addr, host, (socklen_t)hostlen))
            return -errno;
        *port = ntohs(sin->sin_port);
        return AF_INET;
    }
    if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)ss;
        if (!inet_ntop(AF_INET6, &sin6->sin6_addr, host, (socklen_t)hostlen))
            return -errno;
        *port = ntohs(sin6->sin6_port);
        *flowinfo = ntohl(sin6->sin6_flowinfo);
        *scope_id = sin6->sin6_scope_id;
        return AF_INET6;
    }
    if (ss->ss_family == AF_UNIX) {
        const struct sockaddr_un *sun = (const struct sockaddr_un *)ss;
        size_t off = offsetof(struct sockaddr_un, sun_path);
        size_t n = len > off ? (size_t)len - off : 0;
        if (n >= hostlen)
            n = hostlen - 1;
        memcpy(host, sun->sun_path, n);
        host[n] = '\0';
        return AF_UNIX;
    }
    return -EAFNOSUPPORT;
}

/* ---------------------------------------------------------------------------
 * Native splice: the byte path of a blind tunnel (ATS's OneWayTunnel without a
 * Python continuation per transfer).  A pipe moves bytes from src_fd to dst_fd
 * through a buffer; an end is one spliced fd, registered in
 * epoll with ATS_SPLICE_TAG | (address of its end) as its data, so that
 * ats_net_wait pumps its pipes without returning the event to Python.  Python
 * hears of an end only when something needs it (see ATS_SPLICE_* below).  The
 * pipe and end structs are Python's (ffi.new); a pipe's buffer is allocated
 * here at its first read and freed when Python releases the pipe.
 * ------------------------------------------------------------------------- */

#define ATS_SPLICE_TAG (1ULL << 63)

/* Pump status bits. */
#define ATS_SPLICE_MOVED 1u /* bytes moved */
#define ATS_SPLICE_MORE 2u  /* stopped at the budget with work left: pump again */
#define ATS_SPLICE_DONE 4u  /* a pipe finished: source EOF, all written, dst shut */
#define ATS_SPLICE_ERROR 8u /* a pipe failed: err holds the errno */

/* Per-thread counters the pumps add to (indices of ats_net_wait's counters). */
#define ATS_CTR_READS 0
#define ATS_CTR_READ_BYTES 1
#define ATS_CTR_WRITES 2
#define ATS_CTR_WRITE_BYTES 3

struct ats_splice_end;

struct ats_pipe {
    int src_fd;
    int dst_fd;
    char *buf;     /* cap bytes, malloc'ed at the first read, freed by ats_pipe_release */
    size_t cap;
    size_t head; /* first byte not yet written */
    size_t tail; /* one past the last byte read */
    size_t budget; /* bytes read per pump at most */
    int src_ready; /* an edge was seen on src and no EAGAIN since */
    int dst_ready;
    int src_hup;   /* the peer hung up: a short read no longer means drained */
    int src_eof;
    int done;      /* finished or failed: the pump does nothing more */
    int err;       /* errno of the failure, 0 if none */
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

static void ats_pipe_fail(struct ats_pipe *p, int err, int on_dst)
{
    p->err = err;
    p->err_on_dst = on_dst;
    p->done = 1;
}

/* Move bytes src -> dst until both sides would block, the buffer is full and dst
 * blocks, the source ended, or budget bytes were read.  Returns status bits. */
static uint32_t ats_pipe_pump(struct ats_pipe *p, uint64_t *ctr)
{
    uint32_t st = 0;
    size_t got = 0;
    if (p->done)
        return 0;
    for (;;) {
        int progress = 0;
        /* Python stops a pipe (a close, possibly from another thread) by setting done:
         * look again before each syscall, so that at most the one in progress moves
         * bytes after the close returned. */
        if (*(volatile int *)&p->done)
            return st;
        if (p->tail > p->head && p->dst_ready) {
            size_t want = p->tail - p->head;
            ssize_t r = send(p->dst_fd, p->buf + p->head, want, MSG_NOSIGNAL);
            ctr[ATS_CTR_WRITES]++;
            if (r > 0) {
                p->head += (size_t)r;
                p->nwritten += (uint64_t)r;
                ctr[ATS_CTR_WRITE_BYTES] += (uint64_t)r;
                p->dst_end->activity++;
                st |= ATS_SPLICE_MOVED;
                progress = 1;
                if (p->head == p->tail)
                    p->head = p->tail = 0;
                else
                    p->dst_ready = 0; /* short write: the socket buffer is full */
            } else if (r < 0 && errno == EINTR) {
                continue;
            } else if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
                p->dst_ready = 0;
            } else {
                ats_pipe_fail(p, r < 0 ? errno : EIO, 1);
                return st | ATS_SPLICE_ERROR;
            }
        }
        if (p->src_eof) {
            if (p->tail == p->head) {
                /* Everything the source sent is written: pass the half-close on. */
                if (shutdown(p->dst_fd, SHUT_WR) < 0 && errno != ENOTCONN) {
                    ats_pipe_fail(p, errno, 1);
                    return st | ATS_SPLICE_ERROR;
                }
                p->done = 1;
                return st | ATS_SPLICE_DONE;
            }
        } else if (p->src_ready && p->tail < p->cap) {
            if (got >= p->budget)
                return st | ATS_SPLICE_MORE;
            if (p->buf == NULL) { /* first bytes: an idle splice holds no buffer */
                p->buf = malloc(p->cap);
                if (p->buf == NULL) {
                    ats_pipe_fail(p, ENOMEM, 0);
                    return st | ATS_SPLICE_ERROR;
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
                got += (size_t)r;
                ctr[ATS_CTR_READ_BYTES] += (uint64_t)r;
                p->src_end->activity++;
                st |= ATS_SPLICE_MOVED;
                progress = 1;
                if ((size_t)r < want && !p->src_hup)
                    p->src_ready = 0; /* a short read drained the socket */
            } else if (r == 0) {
                p->src_eof = 1;
                progress = 1;
            } else if (errno == EINTR) {
                continue;
            } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
                p->src_ready = 0;
            } else {
                ats_pipe_fail(p, errno, 0);
                return st | ATS_SPLICE_ERROR;
            }
        }
        if (!progress)
            return st;
    }
}

/* Free a pipe's buffer (its owner is gone: no pump can run on it any more). */
static void ats_pipe_release(struct ats_pipe *p)
{
    free(p->buf);
    p->buf = NULL;
}

/* An epoll event (or, with mask 0, a kick from Python) on a spliced fd: note
 * the readiness and pump the pipes through it.  Returns status bits. */
static uint32_t ats_splice_end_event(struct ats_splice_end *end, uint32_t mask, uint64_t *ctr)
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
static int ats_net_wait(int epfd, struct epoll_event *evs, int maxevents, int timeout,
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
