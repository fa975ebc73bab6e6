/* The syscall helpers of ats_cffi._native (_native_sys.c); the read and write
 * loops are _native_rw.h's.
 *
 * Each one exists because the loop it holds would otherwise cross from Python
 * into C once per syscall or once per struct field (DESIGN.md section 9).  They
 * keep no state, never block longer than the syscall they wrap, return -errno
 * on failure (so that EAGAIN is a return value) and never touch Python objects.
 *
 * This header is also the cdef of these helpers: build_ffi.py hands it to
 * cffi's cdef() without its #pragma and #include lines, which cdef() cannot
 * read, so it holds nothing else that only a C compiler understands. */
#pragma once

/* What these helpers use, and the system headers of the calls and constants
 * that _native.h binds directly (the cffi module includes this header). */
#include <limits.h>
#include <stddef.h>
#include <stdint.h>
#include <unistd.h>
#include <sys/types.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <netinet/in.h>
#include <netinet/tcp.h>

int ats_epoll_ctl(int epfd, int op, int fd, uint32_t events, uint64_t token);
int ats_epoll_wait(int epfd, struct epoll_event *evs, int maxevents, int timeout,
                   uint64_t *tokens, uint32_t *masks);
int ats_eventfd_read(int fd, uint64_t *value);
int ats_eventfd_write(int fd, uint64_t value);
int ats_accept4(int fd, int flags, struct sockaddr_storage *ss, socklen_t *len);
int ats_so_error(int fd);
int ats_sockaddr_make(int family, const char *host, int port, uint32_t flowinfo,
                      uint32_t scope_id, struct sockaddr_storage *ss, socklen_t *len);
int ats_sockaddr_parse(const struct sockaddr_storage *ss, socklen_t len, char *host,
                       size_t hostlen, int *port, uint32_t *flowinfo, uint32_t *scope_id);
