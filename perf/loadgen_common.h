/*
 * loadgen_common.h: what the C load generators of perf/ (loadgen.c,
 * acceptgen.c) share: the clocks, the fatal-error exit, the loopback address,
 * and the counted window.
 *
 * The counted window: WARMUP_S seconds that are not counted, then DURATION_S
 * seconds that are. "MEASURE\n" goes to stderr where it starts and "DONE\n"
 * where it ends, so that a driver can sample the server over the same window
 * (perf/_common.py's run_client).
 */
#ifndef LOADGEN_COMMON_H
#define LOADGEN_COMMON_H

#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <time.h>

static inline double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* This process's user+system CPU seconds so far. */
static inline double cpu_now(void) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec +
         ru.ru_stime.tv_usec / 1e6;
}

static inline void die(const char *what) {
  perror(what);
  exit(2);
}

/* 0 when HOST is 127.0.0.1, the one address these tools talk to; else says so
 * (as PROG) on stderr and returns 2, the usage exit status. */
static inline int check_loopback(const char *prog, const char *host) {
  if (strcmp(host, "127.0.0.1") == 0)
    return 0;
  fprintf(stderr, "%s: only 127.0.0.1 is allowed\n", prog);
  return 2;
}

static inline struct sockaddr_in loopback_addr(int port) {
  struct sockaddr_in sa = {0};
  sa.sin_family = AF_INET;
  sa.sin_port = htons((uint16_t)port);
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  return sa;
}

struct window {
  double warmup_end, end; /* clock times */
  double t_measure;       /* clock and CPU time where the counting started */
  double cpu_measure;
  int measuring;
};

/* Starts the window now: counting at once when WARMUP is 0. */
static inline void window_start(struct window *w, double warmup,
                                double duration) {
  double t = now();
  w->warmup_end = t + warmup;
  w->end = t + warmup + duration;
  w->t_measure = t;
  w->cpu_measure = cpu_now();
  w->measuring = warmup == 0;
  if (w->measuring)
    fputs("MEASURE\n", stderr);
}

enum { WINDOW_BEGINS = 1, WINDOW_OVER = 2 };

/* Once per pass of the main loop: WINDOW_BEGINS on the pass where counting
 * starts (the caller zeroes its counters), WINDOW_OVER once the window has
 * ended (the caller stops); both on a pass where the two happen. */
static inline int window_pass(struct window *w) {
  double t = now();
  int r = 0;
  if (!w->measuring && t >= w->warmup_end) {
    w->measuring = 1;
    w->t_measure = t;
    w->cpu_measure = cpu_now();
    fputs("MEASURE\n", stderr);
    r |= WINDOW_BEGINS;
  }
  if (t >= w->end)
    r |= WINDOW_OVER;
  return r;
}

/* Ends the window ("DONE\n"): its counted seconds, and this process's CPU
 * seconds over them. */
static inline void window_done(struct window *w, double *seconds,
                               double *cpu_seconds) {
  double t = now(), cpu = cpu_now();
  fputs("DONE\n", stderr);
  fflush(stderr);
  *seconds = t - w->t_measure;
  *cpu_seconds = cpu - w->cpu_measure;
}
/* The command line of loadgen and tlsloadgen:
 *   PROG 127.0.0.1 PORT CONNS MSG_SIZE DURATION_S [WARMUP_S]
 * 0, or 2 after a line on stderr. MSG_SIZE is at most INT_MAX - 256 (the pattern
 * is MSG_SIZE + 256 bytes, and TLS writes take an int). */
struct loadgen_args {
  int port;
  int nconns;
  size_t msg_size;
  double duration;
  double warmup;
};

static inline int parse_loadgen_args(const char *prog, int argc, char **argv,
                                     struct loadgen_args *a) {
  if (argc < 6 || argc > 7) {
    fprintf(stderr,
            "usage: %s 127.0.0.1 PORT CONNS MSG_SIZE DURATION_S [WARMUP_S]\n",
            argv[0]);
    return 2;
  }
  if (check_loopback(prog, argv[1]))
    return 2;
  a->port = atoi(argv[2]);
  a->nconns = atoi(argv[3]);
  long msg = atol(argv[4]);
  a->duration = atof(argv[5]);
  a->warmup = argc > 6 ? atof(argv[6]) : 1.0;
  if (a->port <= 0 || a->port > 65535 || a->nconns <= 0 || msg <= 0 ||
      msg > INT_MAX - 256 || a->duration <= 0 || a->warmup < 0) {
    fprintf(stderr, "%s: bad arguments\n", prog);
    return 2;
  }
  a->msg_size = (size_t)msg;
  return 0;
}

/* The message pattern (MSG_SIZE + 256 bytes, pattern[i] = i & 0xff: each message
 * starts at its own offset) and the buffer echoes are read into (MSG_SIZE bytes). */
static inline void alloc_pattern(size_t msg_size, uint8_t **pattern, uint8_t **rbuf) {
  *pattern = malloc(msg_size + 256);
  *rbuf = malloc(msg_size);
  if (!*pattern || !*rbuf)
    die("malloc");
  for (size_t i = 0; i < msg_size + 256; i++)
    (*pattern)[i] = (uint8_t)i;
}

/* The closed loop over the window: epoll_wait passes on EP (at most MAX events
 * into EVS), each event's data.ptr and mask handed to ON_EVENT, until the window
 * is over or *ERRORS is set (ON_EVENT's -1 counts one and ends the pass).
 * *COUNT is zeroed when counting begins; SECONDS and CPU_SECONDS as window_done's. */
static inline void run_window(int ep, struct epoll_event *evs, int max, double warmup,
                              double duration, int (*on_event)(void *, uint32_t),
                              long *count, long *errors, double *seconds,
                              double *cpu_seconds) {
  struct window w;
  window_start(&w, warmup, duration);
  while (!*errors) {
    int pass = window_pass(&w);
    if (pass & WINDOW_BEGINS)
      *count = 0;
    if (pass & WINDOW_OVER)
      break;
    int n = epoll_wait(ep, evs, max, 50);
    if (n < 0) {
      if (errno == EINTR)
        continue;
      die("epoll_wait");
    }
    for (int k = 0; k < n; k++) {
      if (on_event(evs[k].data.ptr, evs[k].events) < 0) {
        (*errors)++;
        break;
      }
    }
  }
  window_done(&w, seconds, cpu_seconds);
}

#endif
