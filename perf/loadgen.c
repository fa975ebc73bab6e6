/*
 * loadgen.c: closed-loop TCP echo load generator (epoll, non-blocking).
 *
 *   loadgen HOST PORT CONNS MSG_SIZE DURATION_S [WARMUP_S]
 *
 * HOST must be 127.0.0.1 (this tool only talks to loopback). Each connection
 * sends MSG_SIZE bytes, waits for exactly MSG_SIZE bytes back, checks them
 * against the pattern it sent, and repeats: one message in flight per
 * connection. Round trips completed during the WARMUP_S seconds are not
 * counted; then it counts for DURATION_S seconds and prints one JSON line:
 *   {"round_trips": N, "seconds": S, "errors": E, "conns": C, "msg_size": M,
 *    "cpu_seconds": U}
 * where cpu_seconds is this process's user+system CPU during the counted
 * window. "errors" counts connections lost or wrong bytes received; any
 * error ends the run with exit status 1.
 *
 * Before printing, it writes "MEASURE\n" to stderr at the start of the
 * counted window and "DONE\n" at its end, so that a driver can sample the
 * server's CPU time over the same window (loadgen_common.h).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "loadgen_common.h"

struct conn {
  int fd;
  size_t sent;  /* bytes of the current message written */
  size_t recvd; /* bytes of the current echo read */
  uint8_t seq;  /* pattern offset of the current message */
};

static size_t msg_size;
static uint8_t *pattern; /* msg_size + 256 bytes (alloc_pattern) */
static uint8_t *rbuf;
static long errors;

/* What a send or recv that moved no bytes (N <= 0) means: 1 try again now
 * (EINTR), 0 wait for the next edge (EAGAIN), -1 an error (EOF included). */
static int no_bytes(ssize_t n) {
  if (n < 0 && errno == EINTR)
    return 1;
  if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
    return 0;
  return -1;
}

/* Write as much of the current message as the socket takes. -1 on error. */
static int do_send(struct conn *c) {
  while (c->sent < msg_size) {
    ssize_t n = send(c->fd, pattern + c->seq + c->sent, msg_size - c->sent,
                     MSG_NOSIGNAL);
    if (n > 0) {
      c->sent += (size_t)n;
      continue;
    }
    int r = no_bytes(n);
    if (r <= 0)
      return r;
  }
  return 0;
}

/* Read the echo until EAGAIN. Returns 1 when a round trip completed, 0 when
 * more is needed, -1 on error (EOF, reset, too many or wrong bytes). */
static int do_recv(struct conn *c) {
  for (;;) {
    size_t want = msg_size - c->recvd;
    if (want == 0)
      return 1;
    /* never read past the message: a correct echo server sends no more */
    ssize_t n = recv(c->fd, rbuf, want, 0);
    if (n > 0) {
      if (c->recvd + (size_t)n > c->sent)
        return -1; /* echoed bytes we have not sent */
      if (memcmp(rbuf, pattern + c->seq + c->recvd, (size_t)n) != 0)
        return -1;
      c->recvd += (size_t)n;
      continue;
    }
    int r = no_bytes(n);
    if (r <= 0)
      return r;
  }
}

static long rts;

/* One epoll event of a connection: send what the socket takes, then every echo
 * that is complete; a completed round trip starts the next message, whose echo
 * may already be readable with no further edge. -1 on an error. */
static int on_event(void *ptr, uint32_t events) {
  struct conn *c = ptr;
  if (events & EPOLLOUT && c->sent < msg_size && do_send(c) < 0)
    return -1;
  for (;;) {
    int r = do_recv(c);
    if (r <= 0)
      return r;
    rts++;
    c->seq = (uint8_t)(c->seq + 1);
    c->sent = c->recvd = 0;
    if (do_send(c) < 0)
      return -1;
  }
}

int main(int argc, char **argv) {
  struct loadgen_args args;
  if (parse_loadgen_args("loadgen", argc, argv, &args))
    return 2;
  int port = args.port, nconns = args.nconns;
  double duration = args.duration, warmup = args.warmup;
  msg_size = args.msg_size;

  alloc_pattern(msg_size, &pattern, &rbuf);
  struct conn *conns = calloc((size_t)nconns, sizeof *conns);
  struct epoll_event *evs = calloc((size_t)nconns, sizeof *evs);
  if (!conns || !evs)
    die("malloc");

  int ep = epoll_create1(EPOLL_CLOEXEC);
  if (ep < 0)
    die("epoll_create1");
  struct sockaddr_in sa = loopback_addr(port);

  /* Connect blocking (simple, loopback), then switch to non-blocking. */
  for (int i = 0; i < nconns; i++) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
      die("socket");
    int one = 1;
    if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) < 0)
      die("setsockopt TCP_NODELAY");
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0)
      die("connect");
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0)
      die("fcntl O_NONBLOCK");
    conns[i].fd = fd;
    conns[i].seq = (uint8_t)i;
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLET,
                             .data.ptr = &conns[i]};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0)
      die("epoll_ctl");
  }

  /* Start every connection's first message. */
  for (int i = 0; i < nconns; i++)
    if (do_send(&conns[i]) < 0)
      die("send");

  double seconds, cpu_seconds;
  run_window(ep, evs, nconns, warmup, duration, on_event, &rts, &errors, &seconds,
             &cpu_seconds);
  printf("{\"round_trips\": %ld, \"seconds\": %.6f, \"errors\": %ld, "
         "\"conns\": %d, \"msg_size\": %zu, \"cpu_seconds\": %.6f}\n",
         rts, seconds, errors, nconns, msg_size, cpu_seconds);
  fflush(stdout);
  for (int i = 0; i < nconns; i++)
    close(conns[i].fd);
  close(ep);
  return errors ? 1 : 0;
}
