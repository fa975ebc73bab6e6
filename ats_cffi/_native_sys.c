/* The syscall helpers of ats_cffi._native: epoll, eventfd, accept, read and
 * write loops, SO_ERROR and sockaddr conversion (declared and described in
 * _native_sys.h). */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* accept4 (Python.h defines it first when cffi includes this file) */
#endif
#include "_native_sys.h"

#include <errno.h>
#include <string.h>
#include <sys/un.h>
#include <arpa/inet.h>

/* epoll_ctl with the event built on the C stack: safe from any thread and
 * allocates nothing on the Python side. */
int ats_epoll_ctl(int epfd, int op, int fd, uint32_t events, uint64_t token)
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
int ats_epoll_wait(int epfd, struct epoll_event *evs, int maxevents, int timeout,
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

int ats_eventfd_read(int fd, uint64_t *value)
{
    ssize_t r = read(fd, value, sizeof(*value));
    if (r < 0)
        return -errno;
    return r == (ssize_t)sizeof(*value) ? 0 : -EIO;
}

int ats_eventfd_write(int fd, uint64_t value)
{
    ssize_t r = write(fd, &value, sizeof(value));
    if (r < 0)
        return -errno;
    return r == (ssize_t)sizeof(value) ? 0 : -EIO;
}

int ats_accept4(int fd, int flags, struct sockaddr_storage *ss, socklen_t *len)
{
    *len = sizeof(*ss);
    int r = accept4(fd, (struct sockaddr *)ss, len, flags);
    return r < 0 ? -errno : r;
}

/* Accept until EAGAIN, an error, or max connections.  Returns how many fds
 * were stored; *last_err is 0 when max was reached, else the errno that
 * stopped the loop (EAGAIN when the backlog is empty). */
int ats_accept_batch(int fd, int flags, int *fds, int max, int *last_err)
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

/* Read into base[off, off+len) and then spill[0, spill_len) as if they were one run of
 * free space (readv of two iovecs; a plain read while spill_len is 0) until it is full,
 * EOF, EAGAIN or an error, or, with stop_short, after the first read that returns less
 * than it asked for.  Returns the bytes read; *last is the result of the last read: > 0
 * when data was read (the space filled, or a short read with stop_short), 0 for EOF,
 * -errno otherwise.  The spill is the net thread's spare block: a read larger than the
 * tail block's free space takes one syscall, not two. */
ssize_t ats_read_spill(int fd, char *base, size_t off, size_t len, char *spill,
                       size_t spill_len, int stop_short, ssize_t *last)
{
    size_t done = 0, all = len + spill_len;
    ssize_t r = 1;
    struct iovec iov[2];
    while (done < all) {
        size_t want = all - done;
        if (done < len && spill_len) {
            iov[0].iov_base = base + off + done;
            iov[0].iov_len = len - done;
            iov[1].iov_base = spill;
            iov[1].iov_len = spill_len;
            r = readv(fd, iov, 2);
        } else if (done < len) {
            r = read(fd, base + off + done, want);
        } else {
            r = read(fd, spill + (done - len), want);
        }
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

/* ats_read_spill without a spill: read into base[off, off+len). */
ssize_t ats_read_fill(int fd, char *base, size_t off, size_t len, int stop_short,
                      ssize_t *last)
{
    return ats_read_spill(fd, base, off, len, NULL, 0, stop_short, last);
}

/* Write base[off, off+len) until all is written, EAGAIN or an error.
 * *last is > 0 when everything was written, else -errno. */
ssize_t ats_write_all(int fd, const char *base, size_t off, size_t len, ssize_t *last)
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
ssize_t ats_writev_blocks(int fd, char **bases, size_t *offs, size_t *lens, int n,
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
int ats_so_error(int fd)
{
    int err = 0;
    socklen_t len = sizeof(err);
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
        return -errno;
    return err;
}

int ats_sockaddr_make(int family, const char *host, int port, uint32_t flowinfo,
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
int ats_sockaddr_parse(const struct sockaddr_storage *ss, socklen_t len, char *host,
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
