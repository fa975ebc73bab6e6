/* The per-event system calls, made without glibc's cancellation-point wrappers.
 *
 * read, readv, send, sendmsg and epoll_wait are cancellation points: in a process with
 * threads, glibc's wrapper of each turns asynchronous cancellation on before the call
 * and off after it (two atomic updates of the calling thread's state, and a call each).
 * No thread of this process is ever cancelled, so the byte moves and the net loop's
 * wait make the same calls through syscall(2): the same result, -1 and errno on
 * failure. Included by the C parts that make them (_native_rw.c, _native_splice.c,
 * _fastio.c); not a cdef. */
#pragma once

#include <errno.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

/* A read of a socket as recvfrom(2) without an address (recvmsg(2) for iovecs): the same
 * bytes and errors as read(2), without the file layer's steps on the way to the socket
 * (perf, VIO echo 1 KiB x 10: fdget_pos, vfs_read, sock_read_iter and rw_verify_area
 * took about 1% of the server's samples). An fd that is not a socket (ENOTSOCK) is read
 * with read(2) / readv(2). */
static inline ssize_t read_nocancel(int fd, void *buf, size_t n)
{
    ssize_t r = syscall(SYS_recvfrom, fd, buf, n, 0, NULL, NULL);
    if (r < 0 && errno == ENOTSOCK)
        r = syscall(SYS_read, fd, buf, n);
    return r;
}

static inline ssize_t readv_nocancel(int fd, const struct iovec *iov, int n)
{
    struct msghdr msg = {0};
    msg.msg_iov = (struct iovec *)iov;
    msg.msg_iovlen = (size_t)n;
    ssize_t r = syscall(SYS_recvmsg, fd, &msg, 0);
    if (r < 0 && errno == ENOTSOCK)
        r = syscall(SYS_readv, fd, iov, n);
    return r;
}

static inline ssize_t send_nocancel(int fd, const void *buf, size_t n, int flags)
{
    return syscall(SYS_sendto, fd, buf, n, flags, NULL, 0);
}

static inline ssize_t sendmsg_nocancel(int fd, const struct msghdr *msg, int flags)
{
    return syscall(SYS_sendmsg, fd, msg, flags);
}

static inline int epoll_wait_nocancel(int epfd, struct epoll_event *evs, int n, int timeout)
{
    /* epoll_wait(2) is not on every architecture's table; epoll_pwait without a mask is
     * the same call. */
    return (int)syscall(SYS_epoll_pwait, epfd, evs, n, timeout, NULL, 0);
}
