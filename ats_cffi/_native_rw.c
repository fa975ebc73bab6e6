/* The read and write loops of the VC's byte moves (declared and described in
 * _native_rw.h): compiled into both extensions, ats_cffi._native (cffi) and
 * ats_cffi._fastio (the per-event calls, _fastio.c). */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "_native_rw.h"
#include "_native_syscall.h"

#include <errno.h>
#include <string.h>
#include <netinet/in.h>
#include <netinet/tcp.h>

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
            r = readv_nocancel(fd, iov, 2);
        } else if (done < len) {
            r = read_nocancel(fd, base + off + done, want);
        } else {
            r = read_nocancel(fd, spill + (done - len), want);
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
        r = send_nocancel(fd, base + off + done, len - done, MSG_NOSIGNAL);
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
            r = sendmsg_nocancel(fd, &msg, MSG_NOSIGNAL);
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

/* Accept until EAGAIN, an error, or max connections (at most
 * ATS_ACCEPT_BATCH_MAX).  Returns how many fds were stored; *last_err is 0 when
 * max was reached, else the errno that stopped the loop (EAGAIN when the backlog
 * is empty).  With nodelay, each accepted socket gets TCP_NODELAY in the same
 * loop: opt_errs[i] is 0 or the errno of fds[i]'s setsockopt, and *opt_failed
 * counts the failures (the fd is stored either way). */
int ats_accept_batch(int fd, int flags, int nodelay, int *fds, int *opt_errs, int max,
                     int *last_err, int *opt_failed)
{
    static const int one = 1;
    int n = 0;
    *last_err = 0;
    *opt_failed = 0;
    while (n < max) {
        int r = accept4(fd, NULL, NULL, flags);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            *last_err = errno;
            break;
        }
        if (nodelay) {
            opt_errs[n] = 0;
            if (setsockopt(r, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) < 0) {
                opt_errs[n] = errno;
                ++*opt_failed;
            }
        }
        fds[n++] = r;
    }
    return n;
}
