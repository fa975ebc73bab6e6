/* The TLS helpers of ats_cffi._native: see _native_tls.h. */
#include "_native_tls.h"

#include <errno.h>
#include <string.h>
#include <strings.h>
#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>

#if OPENSSL_VERSION_NUMBER < 0x30000000L
#error "ats_cffi's TLS needs OpenSSL 3.0 or later (libssl-dev)"
#endif

static __thread unsigned long last_error;

/* The ex_data slots of an SSL_CTX: its SNI table and its ticket keys. */
static int sni_index = -1, tickets_index = -1;

static void copy_error(char *err, size_t errlen, const char *what)
{
    unsigned long e = ERR_peek_last_error();
    if (e)
        snprintf(err, errlen, "%s: %s", what, ERR_reason_error_string(e) ? ERR_reason_error_string(e) : "error");
    else
        snprintf(err, errlen, "%s failed", what);
    ERR_clear_error();
}

SSL_CTX *ats_tls_ctx_new(int server, int min_version, int max_version, char *err, size_t errlen)
{
    if (sni_index < 0) {
        sni_index = SSL_CTX_get_ex_new_index(0, NULL, NULL, NULL, NULL);
        tickets_index = SSL_CTX_get_ex_new_index(0, NULL, NULL, NULL, NULL);
    }
    ERR_clear_error();
    SSL_CTX *ctx = SSL_CTX_new(server ? TLS_server_method() : TLS_client_method());
    if (ctx == NULL) {
        copy_error(err, errlen, "SSL_CTX_new");
        return NULL;
    }
    if (!SSL_CTX_set_min_proto_version(ctx, min_version)
        || !SSL_CTX_set_max_proto_version(ctx, max_version)) {
        copy_error(err, errlen, "SSL_CTX_set_min/max_proto_version");
        SSL_CTX_free(ctx);
        return NULL;
    }
    /* No renegotiation (a client's attempt is refused), no compression, and a TCP
     * close without close_notify reads as the end of the stream (ATS: EOS). */
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION
                                 | SSL_OP_IGNORE_UNEXPECTED_EOF
                                 | (server ? SSL_OP_CIPHER_SERVER_PREFERENCE : 0));
    /* A write retried after WANT_WRITE may come from another buffer with the same
     * bytes (a gather buffer refilled); idle connections give their record buffers
     * back. */
    SSL_CTX_set_mode(ctx, SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER | SSL_MODE_RELEASE_BUFFERS);
    /* One read() takes every record waiting (up to OpenSSL's buffer), not 2 per record. */
    SSL_CTX_set_read_ahead(ctx, 1);
    return ctx;
}

void ats_tls_ctx_free(SSL_CTX *ctx)
{
    SSL_CTX_free(ctx);
}

int ats_tls_ctx_load_cert(SSL_CTX *ctx, const char *cert, const char *key, char *err,
                          size_t errlen)
{
    ERR_clear_error();
    if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1) {
        copy_error(err, errlen, "certificate");
        return -1;
    }
    if (SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1) {
        copy_error(err, errlen, "private key");
        return -1;
    }
    if (SSL_CTX_check_private_key(ctx) != 1) {
        copy_error(err, errlen, "private key does not match the certificate");
        return -1;
    }
    return 0;
}

int ats_tls_ctx_set_ciphers(SSL_CTX *ctx, const char *tls12, const char *tls13, char *err,
                            size_t errlen)
{
    ERR_clear_error();
    if (tls12 != NULL && SSL_CTX_set_cipher_list(ctx, tls12) != 1) {
        copy_error(err, errlen, "cipher_suite");
        return -1;
    }
    if (tls13 != NULL && SSL_CTX_set_ciphersuites(ctx, tls13) != 1) {
        copy_error(err, errlen, "TLSv1_3.cipher_suites");
        return -1;
    }
    return 0;
}

/* The server's ALPN choice: its first protocol the client offers, else none. */
static int alpn_select(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                       const unsigned char *in, unsigned int inlen, void *arg)
{
    /* arg: [the list's length, 2 bytes big-endian][the list in ALPN wire format] */
    const unsigned char *wire = arg;
    unsigned int wlen = ((unsigned int)wire[0] << 8) | wire[1];
    (void)ssl;
    unsigned char *o = NULL;
    if (SSL_select_next_proto(&o, outlen, wire + 2, wlen, in, inlen) != OPENSSL_NPN_NEGOTIATED)
        return SSL_TLSEXT_ERR_NOACK;
    *out = o;
    return SSL_TLSEXT_ERR_OK;
}

int ats_tls_ctx_set_alpn(SSL_CTX *ctx, int server, const unsigned char *wire, unsigned int len)
{
    if (server) {
        SSL_CTX_set_alpn_select_cb(ctx, alpn_select, (void *)wire);
        return 0;
    }
    return SSL_CTX_set_alpn_protos(ctx, wire + 2, len) == 0 ? 0 : -1;
}

int ats_tls_ctx_set_verify(SSL_CTX *ctx, int verify, const char *cafile, char *err,
                           size_t errlen)
{
    ERR_clear_error();
    if (!verify) {
        SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
        return 0;
    }
    int ok = cafile != NULL ? SSL_CTX_load_verify_locations(ctx, cafile, NULL)
                            : SSL_CTX_set_default_verify_paths(ctx);
    if (ok != 1) {
        copy_error(err, errlen, cafile != NULL ? "CA file" : "default CA paths");
        return -1;
    }
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    return 0;
}

/* ---------------------------------------------------------------- SNI */

static SSL_CTX *sni_lookup(const ats_tls_sni *t, const char *name)
{
    for (int i = 0; i < t->n; i++)
        if (strcasecmp(t->names[i], name) == 0)
            return t->ctxs[i];
    const char *dot = strchr(name, '.');
    if (dot != NULL && dot[1] != '\0') {
        for (int i = 0; i < t->n; i++) {
            const char *p = t->names[i];
            if (p[0] == '*' && p[1] == '.' && strcasecmp(p + 1, dot) == 0)
                return t->ctxs[i];
        }
    }
    return NULL;
}

static int sni_select(SSL *ssl, int *alert, void *arg)
{
    const ats_tls_sni *t = arg;
    const char *name = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
    SSL_CTX *chosen = name != NULL ? sni_lookup(t, name) : NULL;
    if (chosen == NULL)
        chosen = t->fallback;
    if (chosen == NULL) {
        *alert = SSL_AD_UNRECOGNIZED_NAME;
        return SSL_TLSEXT_ERR_ALERT_FATAL;
    }
    if (chosen != SSL_get_SSL_CTX(ssl))
        SSL_set_SSL_CTX(ssl, chosen);
    return SSL_TLSEXT_ERR_OK;
}

void ats_tls_ctx_set_sni(SSL_CTX *ctx, const ats_tls_sni *table)
{
    SSL_CTX_set_tlsext_servername_callback(ctx, sni_select);
    SSL_CTX_set_tlsext_servername_arg(ctx, (void *)table);
}

/* ---------------------------------------------------------------- tickets */

/* Session tickets of ATS's key format: a key's first 16 bytes name it, the next 16
 * are its HMAC-SHA256 secret, the last 16 its AES-128-CBC key. */
static int ticket_key_cb(SSL *ssl, unsigned char name[16], unsigned char *iv,
                         EVP_CIPHER_CTX *cctx, EVP_MAC_CTX *hctx, int enc)
{
    const ats_tls_ticket_keys *t = SSL_CTX_get_ex_data(SSL_get_SSL_CTX(ssl), tickets_index);
    if (t == NULL || t->n <= 0)
        return enc ? -1 : 0;
    const unsigned char *key = NULL;
    int which = 0;
    if (enc) {
        key = t->keys;
        memcpy(name, key, 16);
        if (RAND_bytes(iv, 16) != 1)
            return -1;
    } else {
        for (which = 0; which < t->n; which++) {
            if (memcmp(name, t->keys + (size_t)which * ATS_TLS_TICKET_KEY_LEN, 16) == 0) {
                key = t->keys + (size_t)which * ATS_TLS_TICKET_KEY_LEN;
                break;
            }
        }
        if (key == NULL)
            return 0; /* unknown key: a full handshake */
    }
    OSSL_PARAM params[3];
    params[0] = OSSL_PARAM_construct_octet_string(OSSL_MAC_PARAM_KEY, (void *)(key + 16), 16);
    params[1] = OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, (char *)"SHA256", 0);
    params[2] = OSSL_PARAM_construct_end();
    if (!EVP_MAC_CTX_set_params(hctx, params))
        return -1;
    if (enc ? !EVP_EncryptInit_ex(cctx, EVP_aes_128_cbc(), NULL, key + 32, iv)
            : !EVP_DecryptInit_ex(cctx, EVP_aes_128_cbc(), NULL, key + 32, iv))
        return -1;
    return enc || which == 0 ? 1 : 2; /* 2: an older key's ticket is renewed */
}

/* Install (or replace: a rotation) the ticket keys of ctx.  The table stays the
 * caller's: it must outlive every handshake that may still read it. */
int ats_tls_ctx_set_ticket_keys(SSL_CTX *ctx, const ats_tls_ticket_keys *keys)
{
    if (SSL_CTX_set_ex_data(ctx, tickets_index, (void *)keys) != 1)
        return -1;
    return SSL_CTX_set_tlsext_ticket_key_evp_cb(ctx, ticket_key_cb) == 1 ? 0 : -1;
}

/* n tickets after a TLS 1.3 handshake; 0: no tickets at all (TLS 1.2 either). */
void ats_tls_ctx_set_num_tickets(SSL_CTX *ctx, int n)
{
    if (n == 0)
        SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);
    SSL_CTX_set_num_tickets(ctx, (size_t)n);
}

/* The host names ctx's certificate is for, each followed by '\n': its subjectAltName
 * DNS entries, else its subject's common name (as ATS indexes ssl_multicert.config's
 * certificates).  The length written, or -1 when out is too small. */
int ats_tls_ctx_names(SSL_CTX *ctx, char *out, size_t len)
{
    X509 *cert = SSL_CTX_get0_certificate(ctx);
    size_t at = 0;
    if (cert == NULL)
        return 0;
    GENERAL_NAMES *names = X509_get_ext_d2i(cert, NID_subject_alt_name, NULL, NULL);
    for (int i = 0; names != NULL && i < sk_GENERAL_NAME_num(names); i++) {
        const GENERAL_NAME *g = sk_GENERAL_NAME_value(names, i);
        if (g->type != GEN_DNS)
            continue;
        const unsigned char *d = ASN1_STRING_get0_data(g->d.dNSName);
        size_t n = (size_t)ASN1_STRING_length(g->d.dNSName);
        if (at + n + 1 > len) {
            GENERAL_NAMES_free(names);
            return -1;
        }
        memcpy(out + at, d, n);
        at += n;
        out[at++] = '\n';
    }
    GENERAL_NAMES_free(names);
    if (at == 0) {
        int n = X509_NAME_get_text_by_NID(X509_get_subject_name(cert), NID_commonName, out,
                                          (int)(len > 1 ? len - 1 : 0));
        if (n > 0 && (size_t)n + 1 < len) {
            at = (size_t)n;
            out[at++] = '\n';
        }
    }
    ERR_clear_error();
    return (int)at;
}

/* ---------------------------------------------------------------- the socket BIO */

/* OpenSSL reads and writes the socket through this BIO, which also tells whether the
 * socket's last read() was short: with EPOLLET, a short read proves the socket drained
 * (as in ats_read_spill), so a read step can stop without one more read() just to see
 * EAGAIN.  Writes use send(MSG_NOSIGNAL): no SIGPIPE. */
typedef struct {
    int fd;
    int drained; /* the last read() was short, or would block */
    int eof;
} ats_bio_state;

static BIO_METHOD *bio_method;

static int bio_read(BIO *b, char *buf, int len)
{
    ats_bio_state *st = BIO_get_data(b);
    ssize_t r;
    BIO_clear_retry_flags(b);
    do {
        r = read(st->fd, buf, (size_t)len);
    } while (r < 0 && errno == EINTR);
    if (r > 0) {
        st->drained = r < len;
        return (int)r;
    }
    if (r == 0) {
        st->eof = 1;
        return 0;
    }
    if (errno == EAGAIN || errno == EWOULDBLOCK) {
        st->drained = 1;
        BIO_set_retry_read(b);
    }
    return -1;
}

static int bio_write(BIO *b, const char *buf, int len)
{
    ats_bio_state *st = BIO_get_data(b);
    ssize_t r;
    BIO_clear_retry_flags(b);
    do {
        r = send(st->fd, buf, (size_t)len, MSG_NOSIGNAL);
    } while (r < 0 && errno == EINTR);
    if (r >= 0)
        return (int)r;
    if (errno == EAGAIN || errno == EWOULDBLOCK)
        BIO_set_retry_write(b);
    return -1;
}

static long bio_ctrl(BIO *b, int cmd, long num, void *ptr)
{
    ats_bio_state *st = BIO_get_data(b);
    (void)num;
    (void)ptr;
    switch (cmd) {
    case BIO_CTRL_FLUSH:
        return 1;
    case BIO_CTRL_EOF:
        return st != NULL && st->eof;
    default:
        return 0;
    }
}

static int bio_destroy(BIO *b)
{
    OPENSSL_free(BIO_get_data(b));
    BIO_set_data(b, NULL);
    return 1;
}

static BIO *bio_new(int fd)
{
    if (bio_method == NULL) {
        BIO_METHOD *m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "ats_cffi");
        if (m == NULL || !BIO_meth_set_read(m, bio_read) || !BIO_meth_set_write(m, bio_write)
            || !BIO_meth_set_ctrl(m, bio_ctrl) || !BIO_meth_set_destroy(m, bio_destroy))
            return NULL;
        bio_method = m; /* made once per process, on the first connection */
    }
    ats_bio_state *st = OPENSSL_zalloc(sizeof(*st));
    BIO *b = st != NULL ? BIO_new(bio_method) : NULL;
    if (b == NULL) {
        OPENSSL_free(st);
        return NULL;
    }
    st->fd = fd;
    BIO_set_data(b, st);
    BIO_set_init(b, 1);
    return b;
}

/* ---------------------------------------------------------------- connections */

SSL *ats_tls_new(SSL_CTX *ctx, int fd, int server, const char *host, SSL_SESSION *session)
{
    ERR_clear_error();
    SSL *ssl = SSL_new(ctx);
    if (ssl == NULL)
        return NULL;
    BIO *bio = bio_new(fd);
    if (bio == NULL)
        goto fail;
    SSL_set_bio(ssl, bio, bio); /* the SSL owns it now */
    if (server) {
        SSL_set_accept_state(ssl);
        return ssl;
    }
    SSL_set_connect_state(ssl);
    if (host != NULL && host[0] != '\0') {
        X509_VERIFY_PARAM *vp = SSL_get0_param(ssl);
        if (X509_VERIFY_PARAM_set1_ip_asc(vp, host) != 1) {
            ERR_clear_error(); /* a name, not an address: SNI and a name check */
            if (SSL_set_tlsext_host_name(ssl, host) != 1 || SSL_set1_host(ssl, host) != 1)
                goto fail;
        }
    }
    if (session != NULL && SSL_set_session(ssl, session) != 1)
        goto fail;
    return ssl;
fail:
    SSL_free(ssl);
    ERR_clear_error();
    return NULL;
}

void ats_tls_free(SSL *ssl)
{
    SSL_free(ssl);
}

/* SSL_get_error's answer as this module's result codes (errno as it was left by the
 * call that failed). */
static ssize_t tls_result(SSL *ssl, int ret, int err_no)
{
    switch (SSL_get_error(ssl, ret)) {
    case SSL_ERROR_WANT_READ:
        return -EAGAIN;
    case SSL_ERROR_WANT_WRITE:
        return ATS_TLS_WANT_WRITE;
    case SSL_ERROR_ZERO_RETURN:
        return 0;
    case SSL_ERROR_SYSCALL:
        ERR_clear_error();
        return err_no ? -err_no : 0;
    default:
        last_error = ERR_peek_last_error();
        ERR_clear_error();
        return ATS_TLS_FAILED;
    }
}

int ats_tls_handshake(SSL *ssl)
{
    ERR_clear_error();
    errno = 0;
    int r = SSL_do_handshake(ssl);
    if (r == 1)
        return 1;
    return (int)tls_result(ssl, r, errno);
}

/* Decrypt into base[off, off+len) and then spill[0, spill_len) until both are full
 * or OpenSSL stops: one SSL_read_ex per record.  *last: the last record's size when
 * every call succeeded (OpenSSL or the socket may hold more: the VC stays
 * triggered), else the result code of the call that stopped.  stop_short: once
 * OpenSSL holds nothing more and the socket's last read() was short, stop as if it
 * had said WANT_READ (-EAGAIN), as ats_read_spill's stop_short does. */
ssize_t ats_tls_read(SSL *ssl, char *base, size_t off, size_t len, char *spill,
                     size_t spill_len, int stop_short, ssize_t *last)
{
    ats_bio_state *st = BIO_get_data(SSL_get_rbio(ssl));
    size_t done = 0, all = len + spill_len;
    ssize_t r = 1;
    ERR_clear_error();
    while (done < all) {
        char *p = done < len ? base + off + done : spill + (done - len);
        size_t want = done < len ? len - done : all - done;
        size_t got = 0;
        errno = 0;
        if (SSL_read_ex(ssl, p, want, &got) == 1) {
            done += got;
            r = (ssize_t)got;
            if (stop_short && st->drained && !SSL_has_pending(ssl)) {
                r = -EAGAIN; /* the socket's last read was short: drained, as EAGAIN */
                break;
            }
            continue;
        }
        r = tls_result(ssl, 0, errno);
        break;
    }
    *last = r;
    return (ssize_t)done;
}

/* Encrypt n (base, off, len) blocks, at most `record` bytes a record: a block with a
 * whole record left is written from its memory, smaller pieces are gathered into
 * `gather` (at least `record` bytes) first.  `retry`: the size of the write that
 * last returned WANT_WRITE, which OpenSSL needs repeated with the same bytes (they
 * are the reader's first bytes still, as they were not consumed); 0 for none.
 * last[0]: > 0 when all was written, else the code that stopped (WANT_WRITE is
 * -EAGAIN here, as for a socket; ATS_TLS_WANT_READ when OpenSSL must read first);
 * last[1]: the size to retry with after -EAGAIN. */
ssize_t ats_tls_write_blocks(SSL *ssl, char **bases, size_t *offs, size_t *lens, int n,
                             size_t record, size_t retry, char *gather, ssize_t *last)
{
    size_t total = 0, done = 0, pos = 0; /* pos: offset in block i */
    int i = 0;
    for (int k = 0; k < n; k++)
        total += lens[k];
    last[0] = 1;
    last[1] = 0;
    ERR_clear_error();
    while (done < total) {
        size_t size = retry ? retry : (total - done < record ? total - done : record);
        retry = 0;
        if (size > total - done)
            size = total - done;
        const char *p;
        if (lens[i] - pos >= size) {
            p = bases[i] + offs[i] + pos;
        } else {
            size_t got = 0, j = (size_t)i, at = pos;
            while (got < size) {
                size_t k = lens[j] - at;
                if (k > size - got)
                    k = size - got;
                memcpy(gather + got, bases[j] + offs[j] + at, k);
                got += k;
                j++;
                at = 0;
            }
            p = gather;
        }
        size_t written = 0;
        errno = 0;
        if (SSL_write_ex(ssl, p, size, &written) != 1) {
            ssize_t r = tls_result(ssl, 0, errno);
            if (r == ATS_TLS_WANT_WRITE) {
                last[0] = -EAGAIN;
                last[1] = (ssize_t)size;
            } else if (r == -EAGAIN) {
                last[0] = ATS_TLS_WANT_READ; /* OpenSSL must read first */
                last[1] = (ssize_t)size;
            } else {
                last[0] = r == 0 ? -EPIPE : r;
            }
            break;
        }
        done += written;
        size_t adv = written;
        while (adv > 0) {
            size_t k = lens[i] - pos;
            if (adv < k) {
                pos += adv;
                break;
            }
            adv -= k;
            i++;
            pos = 0;
        }
    }
    return (ssize_t)done;
}

/* Send close_notify, once, without waiting for the peer's. */
int ats_tls_shutdown(SSL *ssl)
{
    ERR_clear_error();
    int r = SSL_shutdown(ssl);
    ERR_clear_error();
    return r;
}

int ats_tls_pending(SSL *ssl)
{
    return SSL_pending(ssl);
}

int ats_tls_session_reused(SSL *ssl)
{
    return SSL_session_reused(ssl);
}

int ats_tls_version(SSL *ssl)
{
    return SSL_version(ssl);
}

static int copy_out(const char *s, size_t n, char *out, size_t len)
{
    if (s == NULL || len == 0)
        return 0;
    if (n >= len)
        n = len - 1;
    memcpy(out, s, n);
    out[n] = '\0';
    return (int)n;
}

int ats_tls_alpn(SSL *ssl, char *out, size_t len)
{
    const unsigned char *p = NULL;
    unsigned int n = 0;
    SSL_get0_alpn_selected(ssl, &p, &n);
    return copy_out((const char *)p, n, out, len);
}

int ats_tls_servername(SSL *ssl, char *out, size_t len)
{
    const char *s = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
    return copy_out(s, s ? strlen(s) : 0, out, len);
}

int ats_tls_cipher(SSL *ssl, char *out, size_t len)
{
    const char *s = SSL_get_cipher_name(ssl);
    return copy_out(s, s ? strlen(s) : 0, out, len);
}

/* The connection's session if it can be resumed (a reference the caller frees). */
SSL_SESSION *ats_tls_get_session(SSL *ssl)
{
    SSL_SESSION *s = SSL_get1_session(ssl);
    if (s != NULL && !SSL_SESSION_is_resumable(s)) {
        SSL_SESSION_free(s);
        return NULL;
    }
    return s;
}

void ats_tls_session_free(SSL_SESSION *session)
{
    SSL_SESSION_free(session);
}

unsigned long ats_tls_last_error(void)
{
    unsigned long e = last_error;
    last_error = 0;
    return e;
}

int ats_tls_error_reason(unsigned long code)
{
    return ERR_GET_REASON(code);
}

void ats_tls_error_string(unsigned long code, char *out, size_t len)
{
    ERR_error_string_n(code, out, len);
}
