/*
 * tlsloadgen.c: closed-loop TLS echo load generator (OpenSSL 3, epoll,
 * non-blocking): the TLS sibling of loadgen.c.
 *
 *   tlsloadgen HOST PORT CONNS MSG_SIZE DURATION_S [WARMUP_S]
 *
 * HOST must be 127.0.0.1 (this tool only talks to loopback). It opens CONNS
 * connections and completes a TLS 1.3 handshake on every one of them before
 * anything else: connects and handshakes are outside the warm-up and the
 * counted window. Then, as loadgen.c, each connection writes MSG_SIZE bytes of
 * the pattern (SSL_write), reads exactly MSG_SIZE bytes back (SSL_read),
 * checks them against what it sent, and repeats: one message in flight per
 * connection. Round trips completed during the WARMUP_S seconds (default 1)
 * are not counted; then it counts for DURATION_S seconds and prints
 * loadgen.c's JSON line with one more field, the TLS 1.3 suite negotiated:
 *   {"round_trips": N, "seconds": S, "errors": E, "conns": C, "msg_size": M,
 *    "cpu_seconds": U, "cipher": "TLS_AES_256_GCM_SHA384"}
 * "errors" counts connections lost or wrong bytes received; any error ends
 * the run with exit status 1 (the first one is described on stderr), and a
 * handshake that fails or is not done within HANDSHAKE_TIMEOUT_S ends it with
 * exit status 2 before any counting. "MEASURE\n" and "DONE\n" on stderr mark
 * the counted window (loadgen_common.h).
 *
 * No certificate is verified (SSL_VERIFY_NONE): this is a load generator for
 * loopback servers holding a self-signed test certificate (perf/tls_cases.py
 * makes one per session), not a client to trust with anything.
 *
 * OpenSSL over non-blocking sockets: each socket is registered once, edge-
 * triggered, for both EPOLLIN and EPOLLOUT, and on any edge both directions of
 * its connection are driven until OpenSSL answers WANT_READ or WANT_WRITE
 * (SSL_read may need to write and SSL_write to read, so neither waits on the
 * edge it expects alone). An SSL_write that answered WANT_* is called again
 * with the same buffer and length: `sent` moves only when SSL_write reports
 * bytes written. SSL_MODE_ENABLE_PARTIAL_WRITE makes it report each record as
 * soon as it is out, so `sent` bounds what the server can have echoed. Any
 * error other than WANT_* ends the run, so OpenSSL's error queue is empty
 * before every call, as SSL_get_error needs.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "loadgen_common.h"

#define HANDSHAKE_TIMEOUT_S 30.0

struct conn {
  int fd;
  int index;     /* its number, for the error message */
  int handshake; /* 1 once SSL_connect has succeeded */
  SSL *ssl;
  size_t sent;  /* bytes of the current message SSL_write reported written */
  size_t recvd; /* bytes of the current echo read */
  uint8_t seq;  /* pattern offset of the current message */
};

static size_t msg_size;
static uint8_t *pattern; /* msg_size + 256 bytes (alloc_pattern) */
static uint8_t *rbuf;
static long errors;
static long rts;
static int reported; /* the first error was described on stderr */

/* Describes the first failure on stderr: which connection, which call, what
 * OpenSSL (or the socket) said. */
static void report(const struct conn *c, const char *call, int code) {
  if (reported++)
    return;
  char text[256] = "";
  unsigned long e = ERR_peek_error();
  if (e)
    ERR_error_string_n(e, text, sizeof text);
  else if (code == SSL_ERROR_SYSCALL)
    snprintf(text, sizeof text, "%s", errno ? strerror(errno) : "EOF");
  else if (code == SSL_ERROR_ZERO_RETURN)
    snprintf(text, sizeof text, "close_notify from the server");
  fprintf(stderr, "tlsloadgen: connection %d: %s: SSL error %d %s\n", c->index,
          call, code, text);
}

/* What a call that returned RET <= 0 means: 0 wait for the next edge (WANT_READ
 * or WANT_WRITE), -1 an error (reported). */
static int wants(struct conn *c, int ret, const char *call) {
  int code = SSL_get_error(c->ssl, ret);
  if (code == SSL_ERROR_WANT_READ || code == SSL_ERROR_WANT_WRITE)
    return 0;
  report(c, call, code);
  return -1;
}

/* Drive the handshake: 1 done, 0 waiting for an edge, -1 failed. */
static int do_handshake(struct conn *c) {
  int r = SSL_connect(c->ssl);
  if (r == 1) {
    c->handshake = 1;
    return 1;
  }
  return wants(c, r, "SSL_connect");
}

/* Write as much of the current message as OpenSSL and the socket take. 0 when
 * it is all written or OpenSSL wants an edge, -1 on error. */
static int do_send(struct conn *c) {
  while (c->sent < msg_size) {
    /* after WANT_*, the same pointer and length as the call before */
    int n = SSL_write(c->ssl, pattern + c->seq + c->sent,
                      (int)(msg_size - c->sent));
    if (n > 0) {
      c->sent += (size_t)n;
      continue;
    }
    return wants(c, n, "SSL_write");
  }
  return 0;
}

/* Read the echo until OpenSSL wants an edge. 1 when a round trip completed,
 * 0 when more is needed, -1 on error (EOF, reset, too many or wrong bytes). */
static int do_recv(struct conn *c) {
  for (;;) {
    size_t want = msg_size - c->recvd;
    if (want == 0)
      return 1;
    /* never read past the message: a correct echo server sends no more */
    int n = SSL_read(c->ssl, rbuf, (int)want);
    if (n > 0) {
      if (c->recvd + (size_t)n > c->sent ||
          memcmp(rbuf, pattern + c->seq + c->recvd, (size_t)n) != 0) {
        if (!reported++)
          fprintf(stderr, "tlsloadgen: connection %d: wrong bytes echoed\n",
                  c->index);
        return -1;
      }
      c->recvd += (size_t)n;
      continue;
    }
    return wants(c, n, "SSL_read");
  }
}

/* Everything a connection can do now: the rest of its message, then its echo,
 * starting the next message after each completed round trip (its echo may
 * already be inside OpenSSL or the socket, with no further edge to come).
 * Returns once OpenSSL wants an edge; -1 on error. */
static int drive(struct conn *c) {
  if (c->sent < msg_size && do_send(c) < 0)
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

static SSL_CTX *client_ctx(void) {
  SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
  if (!ctx || !SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION) ||
      !SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION)) {
    ERR_print_errors_fp(stderr);
    exit(2);
  }
  SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL); /* see the header */
  SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE);
  SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
  return ctx;
}

/* run_window's handler: drive the connection (whatever the event's mask). */
static int on_event(void *ptr, uint32_t events) {
  (void)events;
  return drive(ptr);
}

int main(int argc, char **argv) {
  struct loadgen_args args;
  if (parse_loadgen_args("tlsloadgen", argc, argv, &args))
    return 2;
  int port = args.port, nconns = args.nconns;
  double duration = args.duration, warmup = args.warmup;
  msg_size = args.msg_size;

  alloc_pattern(msg_size, &pattern, &rbuf);
  struct conn *conns = calloc((size_t)nconns, sizeof *conns);
  struct epoll_event *evs = calloc((size_t)nconns, sizeof *evs);
  if (!conns || !evs)
    die("malloc");

  SSL_CTX *ctx = client_ctx();
  int ep = epoll_create1(EPOLL_CLOEXEC);
  if (ep < 0)
    die("epoll_create1");
  struct sockaddr_in sa = loopback_addr(port);

  /* Connect blocking (simple, loopback), then switch to non-blocking. */
  for (int i = 0; i < nconns; i++) {
    struct conn *c = &conns[i];
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
    c->fd = fd;
    c->index = i;
    c->seq = (uint8_t)i;
    c->ssl = SSL_new(ctx);
    if (!c->ssl || !SSL_set_fd(c->ssl, fd)) {
      ERR_print_errors_fp(stderr);
      return 2;
    }
    SSL_set_connect_state(c->ssl);
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLET,
                             .data.ptr = c};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0)
      die("epoll_ctl");
  }

  /* Every handshake, before the warm-up. */
  int pending = nconns;
  for (int i = 0; i < nconns; i++) {
    int r = do_handshake(&conns[i]);
    if (r < 0)
      return 2;
    pending -= r;
  }
  double deadline = now() + HANDSHAKE_TIMEOUT_S;
  while (pending > 0) {
    if (now() > deadline) {
      fprintf(stderr, "tlsloadgen: %d handshakes not done after %.0f s\n",
              pending, HANDSHAKE_TIMEOUT_S);
      return 2;
    }
    int n = epoll_wait(ep, evs, nconns, 100);
    if (n < 0) {
      if (errno == EINTR)
        continue;
      die("epoll_wait");
    }
    for (int k = 0; k < n; k++) {
      struct conn *c = evs[k].data.ptr;
      if (c->handshake)
        continue;
      int r = do_handshake(c);
      if (r < 0)
        return 2;
      pending -= r;
    }
  }
  const char *cipher = SSL_get_cipher_name(conns[0].ssl);

  /* Start every connection's first message (and read whatever the server
   * sent after its handshake, its session tickets, whose edge is gone). */
  for (int i = 0; i < nconns && !errors; i++)
    if (drive(&conns[i]) < 0)
      errors++;

  double seconds, cpu_seconds;
  run_window(ep, evs, nconns, warmup, duration, on_event, &rts, &errors, &seconds,
             &cpu_seconds);
  printf("{\"round_trips\": %ld, \"seconds\": %.6f, \"errors\": %ld, "
         "\"conns\": %d, \"msg_size\": %zu, \"cpu_seconds\": %.6f, "
         "\"cipher\": \"%s\"}\n",
         rts, seconds, errors, nconns, msg_size, cpu_seconds,
         cipher ? cipher : "");
  fflush(stdout);
  for (int i = 0; i < nconns; i++) {
    SSL_free(conns[i].ssl); /* no close_notify: the run is over */
    close(conns[i].fd);
  }
  SSL_CTX_free(ctx);
  close(ep);
  return errors ? 1 : 0;
}
