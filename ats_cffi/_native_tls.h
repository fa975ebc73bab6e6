/* The TLS connections of ats_cffi._native (_native_tls.c): OpenSSL (libssl 3) as
 * the SSLNetVConnection uses it (ats_cffi/net/tls/); its contexts are
 * _native_tls_ctx.h's.
 *
 * Python reaches OpenSSL only through these functions, whose signatures do not
 * change with OpenSSL's macros.  The per-record loops are here: a read step
 * decrypts into IOBuffer blocks with as many SSL_read_ex calls as it takes, and a
 * write step encrypts a reader's blocks record by record (small blocks gathered
 * into one record) without a Python call per record, as ATS's ssl_read_from_net
 * and load_buffer_and_write do.
 *
 * Results follow _native_sys.h: > 0 bytes moved; in *last, 0 for the end of the
 * stream (close_notify, or a TCP close without one, as ATS maps both to EOS),
 * -EAGAIN when OpenSSL wants to read and the socket would block, and the codes
 * below.  OpenSSL's error queue is read and cleared inside each call. */
#pragma once

#include "_native_tls_ctx.h"

/* OpenSSL wants to write and the socket would block (during a read, too). */
#define ATS_TLS_WANT_WRITE -100001
/* OpenSSL must read before a write can go on (a write step's result). */
#define ATS_TLS_WANT_READ -100003
/* Dynamic record sizing's small records (ATS's SSL_DEF_TLS_RECORD_SIZE). */
#define ATS_TLS_SMALL_RECORD 1300
/* A TLS protocol error (the reason: ats_tls_last_error, ats_tls_error_string). */
#define ATS_TLS_FAILED -100002

SSL *ats_tls_new(SSL_CTX *ctx, int fd, int server, const char *host, SSL_SESSION *session);
void ats_tls_free(SSL *ssl);
int ats_tls_handshake(SSL *ssl);
ssize_t ats_tls_read(SSL *ssl, char *base, size_t off, size_t len, char *spill,
                     size_t spill_len, int stop_short, ssize_t *last);
/* last[2]: see _native_tls.c */
ssize_t ats_tls_write_blocks(SSL *ssl, char **bases, size_t *offs, size_t *lens, int n,
                             size_t record, size_t small_until, size_t retry, char *gather,
                             ssize_t *last);
ssize_t ats_tls_write(SSL *ssl, char *base, size_t off, size_t len, size_t record,
                      size_t small_until, size_t retry, char *gather, ssize_t *last);
int ats_tls_shutdown(SSL *ssl);
int ats_tls_session_reused(SSL *ssl);
int ats_tls_version(SSL *ssl);
int ats_tls_alpn(SSL *ssl, char *out, size_t len);
int ats_tls_servername(SSL *ssl, char *out, size_t len);
int ats_tls_cipher(SSL *ssl, char *out, size_t len);
SSL_SESSION *ats_tls_get_session(SSL *ssl);
void ats_tls_session_free(SSL_SESSION *session);
/* The OpenSSL error of this thread's last ATS_TLS_FAILED (0: none). */
unsigned long ats_tls_last_error(void);
void ats_tls_error_string(unsigned long code, char *out, size_t len);
