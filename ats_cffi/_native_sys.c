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
