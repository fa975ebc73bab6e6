/* The TLS contexts of ats_cffi._native (_native_tls_ctx.c): OpenSSL's SSL_CTX as
 * ats_cffi/net/tls/context.py makes it: versions, ciphers, certificates and their
 * choice by SNI, ALPN, the client's verification, session tickets.  Bad input is a
 * -1 with OpenSSL's reason in err.  The connections are _native_tls.h's.
 *
 * Like the other headers, this one is also its own cdef (build_ffi.py). */
#pragma once

#include <openssl/ssl.h>
#include <openssl/err.h>

/* Bytes of one key in a session ticket key file (ATS: name, HMAC secret, AES key). */
#define ATS_TLS_TICKET_KEY_LEN 48
/* Protocol versions (TLS1_2_VERSION, TLS1_3_VERSION). */
#define ATS_TLS_V1_2 0x0303
#define ATS_TLS_V1_3 0x0304

typedef struct ssl_ctx_st SSL_CTX;
typedef struct ssl_st SSL;
typedef struct ssl_session_st SSL_SESSION;

/* Certificate choice by SNI: the contexts of a multi-certificate configuration.
 * names[i] is a lower-case host name or "*.domain"; fallback may be NULL (then a
 * ClientHello whose name matches none is refused with unrecognized_name). */
typedef struct {
    int n;
    const char **names;
    SSL_CTX **ctxs;
    SSL_CTX *fallback;
} ats_tls_sni;

/* Session ticket keys: n keys of ATS_TLS_TICKET_KEY_LEN bytes; the first one
 * encrypts, each decrypts (a ticket of an older key is renewed). */
typedef struct {
    int n;
    const unsigned char *keys;
} ats_tls_ticket_keys;

SSL_CTX *ats_tls_ctx_new(int server, int min_version, int max_version, char *err,
                         size_t errlen);
void ats_tls_ctx_free(SSL_CTX *ctx);
int ats_tls_ctx_load_cert(SSL_CTX *ctx, const char *cert, const char *key, char *err,
                          size_t errlen);
int ats_tls_ctx_set_ciphers(SSL_CTX *ctx, const char *tls12, const char *tls13, char *err,
                            size_t errlen);
/* wire: [length, 2 bytes big-endian][protocols in ALPN wire format], kept alive by
 * the caller as long as ctx */
int ats_tls_ctx_set_alpn(SSL_CTX *ctx, int server, const unsigned char *wire,
                         unsigned int len);
int ats_tls_ctx_set_verify(SSL_CTX *ctx, int verify, const char *cafile, char *err,
                           size_t errlen);
void ats_tls_ctx_set_sni(SSL_CTX *ctx, const ats_tls_sni *table);
int ats_tls_ctx_set_ticket_keys(SSL_CTX *ctx, const ats_tls_ticket_keys *keys);
void ats_tls_ctx_set_num_tickets(SSL_CTX *ctx, int n);
int ats_tls_ctx_names(SSL_CTX *ctx, char *out, size_t len);
