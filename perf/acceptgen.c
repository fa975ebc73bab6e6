/*
 * acceptgen.c: connect+close load generator for accept benchmarks (epoll).
 *
 *   acceptgen HOST PORT CONCURRENCY DURATION_S [WARMUP_S [MODE]]
 *
 * HOST must be 127.0.0.1 (this tool only talks to loopback). It keeps
 * CONCURRENCY non-blocking connects in flight. A connect is complete when its
 * socket turns writable with SO_ERROR == 0; then, by MODE:
 *   close  close it at once and start a new connect in its place;
 *   wait   (default) wait until the server has closed it (EOF or reset seen),
 *          then close it and start a new one: every counted connection was
 *          accepted and closed by the server, and no more than CONCURRENCY
 *          connections ever wait in the server's accept queue;
 *   echo   send one byte, wait until the server sends it back, then close it
 *          (the RST below) and start a new one: an echo server's accept, one
 *          round trip and its close, per connection.
 * Every socket has SO_LINGER {1, 0}: its close sends a RST, so the client
 * leaves no TIME_WAIT behind (and in wait mode, the RST also ends the
 * server's FIN_WAIT2 side at once): the ephemeral port range is never
 * exhausted, however long the run. Connections completed during the WARMUP_S
 * seconds (default 1) are not counted; then it counts for DURATION_S seconds
 * and prints one JSON line:
 *   {"connects": N, "confirmed": M, "seconds": S, "errors": E,
 *    "concurrency": C, "mode": "...", "cpu_seconds": U, "first_error": "..."}
 * connects: completed connects; confirmed: connections the server closed
 * (wait mode) or whose byte came back (echo mode; 0 in close mode); errors:
 * failed connects (SO_ERROR != 0 or socket/connect failing at once), in wait
 * mode connections on which the server sent data instead of closing, and in
 * echo mode connections that ended or failed before their byte came back. cpu_seconds is this process's
 * user+system CPU during the counted window. It writes "MEASURE\n" to stderr
 * at the start of the counted window and "DONE\n" at its end, so that a
 * driver can sample the server over the same window (loadgen_common.h). Exit
 * status 1 if there were errors.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "loadgen_common.h"

enum { IDLE, CONNECTING, WAITING };

struct slot {
  int fd;
  int state;
};

static struct sockaddr_in sa;
static int ep;
enum { MODE_CLOSE, MODE_WAIT, MODE_ECHO };
static const char *const MODE_NAMES[] = {"close", "wait", "echo"};
static int mode = MODE_WAIT;
static long connects, confirmed, errors;
static int first_error;

static void count_error(int err) {
  errors++;
  if (!first_error)
    first_error = err;
}

static void finish(struct slot *s) {
  close(s->fd); /* SO_LINGER {1, 0}: RST, no TIME_WAIT */
  s->fd = -1;
  s->state = IDLE;
}

/* Start a connect in slot s (index i). Failures are counted and leave it IDLE. */
static void start(struct slot *s, int i) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    count_error(errno);
    return;
  }
  struct linger lg = {.l_onoff = 1, .l_linger = 0};
  if (setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg) < 0)
    die("setsockopt SO_LINGER");
  if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0 &&
      errno != EINPROGRESS) {
    count_error(errno);
    close(fd);
    return;
  }
  /* Edge-triggered: the connect's completion is one EPOLLOUT edge; the
   * server's close (wait mode) or its echo is a later EPOLLIN edge. */
  struct epoll_event ev = {.events = EPOLLOUT | EPOLLET |
                                     (mode != MODE_CLOSE ? EPOLLIN | EPOLLRDHUP : 0),
                           .data.u32 = (uint32_t)i};
  if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0)
    die("epoll_ctl");
  s->fd = fd;
  s->state = CONNECTING;
}

static void on_event(struct slot *s, uint32_t events) {
  if (s->state == CONNECTING) {
    if (!(events & (EPOLLOUT | EPOLLERR | EPOLLHUP)))
      return;
    int err = 0;
    socklen_t len = sizeof err;
    if (getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
      err = errno;
    if (err) {
      count_error(err);
      finish(s);
      return;
    }
    connects++;
    if (mode == MODE_CLOSE) {
      finish(s);
      return;
    }
    if (mode == MODE_ECHO && send(s->fd, "x", 1, MSG_NOSIGNAL) != 1) {
      count_error(errno); /* a fresh socket's buffer has room for one byte */
      finish(s);
      return;
    }
    s->state = WAITING;
    if (!(events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)))
      return; /* the server's close comes as a later edge */
  }
  if (s->state == WAITING) {
    char b[64];
    ssize_t n = recv(s->fd, b, sizeof b, 0);
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
      return;
    if (mode == MODE_ECHO) {
      if (n == 1 && b[0] == 'x')
        confirmed++;
      else /* closed or failed before echoing, or sent something else */
        count_error(n > 0 ? EPROTO : n == 0 ? ECONNRESET : errno);
    } else if (n == 0 || (n < 0 && (errno == ECONNRESET || errno == EPIPE))) {
      confirmed++;
    } else {
      count_error(n > 0 ? EPROTO : errno); /* data from a server that should close */
    }
    finish(s);
  }
}

int main(int argc, char **argv) {
  if (argc < 5 || argc > 7) {
    fprintf(stderr,
            "usage: %s 127.0.0.1 PORT CONCURRENCY DURATION_S [WARMUP_S "
            "[close|wait|echo]]\n",
            argv[0]);
    return 2;
  }
  if (check_loopback("acceptgen", argv[1]))
    return 2;
  int port = atoi(argv[2]);
  int conc = atoi(argv[3]);
  double duration = atof(argv[4]);
  double warmup = argc > 5 ? atof(argv[5]) : 1.0;
  if (argc > 6) {
    for (mode = MODE_ECHO; mode >= 0 && strcmp(argv[6], MODE_NAMES[mode]) != 0; mode--)
      ;
    if (mode < 0) {
      fprintf(stderr, "acceptgen: MODE must be close, wait or echo\n");
      return 2;
    }
  }
  if (port <= 0 || port > 65535 || conc <= 0 || duration <= 0 || warmup < 0) {
    fprintf(stderr, "acceptgen: bad arguments\n");
    return 2;
  }
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < (rlim_t)conc + 16) {
    rl.rlim_cur = rl.rlim_max < (rlim_t)conc + 16 ? rl.rlim_max
                                                  : (rlim_t)conc + 16;
    setrlimit(RLIMIT_NOFILE, &rl);
  }

  struct slot *slots = calloc((size_t)conc, sizeof *slots);
  struct epoll_event *evs = calloc((size_t)conc, sizeof *evs);
  if (!slots || !evs)
    die("malloc");
  ep = epoll_create1(EPOLL_CLOEXEC);
  if (ep < 0)
    die("epoll_create1");
  sa = loopback_addr(port);
  for (int i = 0; i < conc; i++)
    slots[i].fd = -1;

  struct window w;
  window_start(&w, warmup, duration);
  for (;;) {
    int pass = window_pass(&w);
    if (pass & WINDOW_BEGINS) {
      connects = confirmed = errors = 0;
      first_error = 0;
    }
    if (pass & WINDOW_OVER)
      break;
    /* Refill: every slot that finished (or failed to start) gets a connect. */
    for (int i = 0; i < conc; i++)
      if (slots[i].state == IDLE)
        start(&slots[i], i);
    int n = epoll_wait(ep, evs, conc, 50);
    if (n < 0) {
      if (errno == EINTR)
        continue;
      die("epoll_wait");
    }
    for (int k = 0; k < n; k++)
      on_event(&slots[evs[k].data.u32], evs[k].events);
  }
  double seconds, cpu_seconds;
  window_done(&w, &seconds, &cpu_seconds);
  printf("{\"connects\": %ld, \"confirmed\": %ld, \"seconds\": %.6f, "
         "\"errors\": %ld, \"concurrency\": %d, \"mode\": \"%s\", "
         "\"cpu_seconds\": %.6f, \"first_error\": \"%s\"}\n",
         connects, confirmed, seconds, errors, conc,
         MODE_NAMES[mode], cpu_seconds,
         first_error ? strerror(first_error) : "");
  fflush(stdout);
  for (int i = 0; i < conc; i++)
    if (slots[i].fd >= 0)
      close(slots[i].fd);
  close(ep);
  return errors ? 1 : 0;
}
