/* The read and write loops of a VC's byte moves (_native_rw.c): read until the
 * space is full or the socket drained, write until all is written or the socket
 * is full, each in one call instead of one crossing per syscall (DESIGN.md
 * section 9); and the accept loop of a listening socket, which is non-blocking in
 * every mode (accept threads wait in poll).  They keep no state, never block
 * longer than the syscall they wrap, report -errno as a value (EAGAIN is one),
 * retry EINTR, and never touch Python objects.  Compiled into ats_cffi._native
 * (this header is also their cdef) and into ats_cffi._fastio, which calls them on
 * the per-event path.
 *
 * As a cdef it holds nothing that only a C compiler understands (build_ffi.py
 * drops the #pragma and #include lines). */
#pragma once

#include <stddef.h>
#include <sys/types.h>
#include <sys/socket.h>
#include <sys/uio.h>

/* Most iovecs one writev of ats_writev_blocks takes; the callers size their
 * block arrays with it (lib.ATS_IOV_MAX). */
#define ATS_IOV_MAX 64
/* Most connections one ats_accept_batch call takes (lib.ATS_ACCEPT_BATCH_MAX). */
#define ATS_ACCEPT_BATCH_MAX 256

ssize_t ats_read_fill(int fd, char *base, size_t off, size_t len, int stop_short,
                      ssize_t *last);
ssize_t ats_read_spill(int fd, char *base, size_t off, size_t len, char *spill,
                       size_t spill_len, int stop_short, ssize_t *last);
ssize_t ats_write_all(int fd, const char *base, size_t off, size_t len, ssize_t *last);
ssize_t ats_writev_blocks(int fd, char **bases, size_t *offs, size_t *lens, int n,
                          ssize_t *last);
int ats_accept_batch(int fd, int flags, int nodelay, int *fds, int *opt_errs, int max,
                     int *last_err, int *opt_failed);
