/* The TLS connections of ats_cffi._native: see _native_tls.h. */
#include "_native_tls.h"

#include <errno.h>
#include <string.h>

/* The OpenSSL error of this thread's last ATS_TLS_FAILED (ats_tls_last_error). */
static __thread unsigned long last_error;

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
    /* Only a read() of this step proves the socket drained: one of an earlier turn
     * (a handshake's, say) may have been followed by arrivals whose edge is gone. */
    st->drained = 0;
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

/* Encrypt n (base, off, len) blocks, at most `record` bytes a record (the first
 * `small_until` bytes in records of ATS_TLS_SMALL_RECORD bytes: dynamic record
 * sizing switches within a write, as ATS's load_buffer_and_write does): a block with a
 * whole record left is written from its memory, smaller pieces are gathered into
 * `gather` (at least `record` bytes) first.  `retry`: the size of the write that
 * last returned WANT_WRITE, which OpenSSL needs repeated with the same bytes (they
 * are the reader's first bytes still, as they were not consumed); 0 for none.
 * last[0]: > 0 when all was written, else the code that stopped (WANT_WRITE is
 * -EAGAIN here, as for a socket; ATS_TLS_WANT_READ when OpenSSL must read first);
 * last[1]: the size to retry with after -EAGAIN. */
ssize_t ats_tls_write_blocks(SSL *ssl, char **bases, size_t *offs, size_t *lens, int n,
                             size_t record, size_t small_until, size_t retry, char *gather,
                             ssize_t *last)
{
    size_t total = 0, done = 0, pos = 0; /* pos: offset in block i */
    int i = 0;
    for (int k = 0; k < n; k++)
        total += lens[k];
    last[0] = 1;
    last[1] = 0;
    ERR_clear_error();
    while (done < total) {
        size_t limit = done < small_until ? ATS_TLS_SMALL_RECORD : record;
        size_t size = retry ? retry : (total - done < limit ? total - done : limit);
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

/* ats_tls_write_blocks of one block (the common case: no iovec arrays to fill). */
ssize_t ats_tls_write(SSL *ssl, char *base, size_t off, size_t len, size_t record,
                      size_t small_until, size_t retry, char *gather, ssize_t *last)
{
    return ats_tls_write_blocks(ssl, &base, &off, &len, 1, record, small_until, retry, gather,
                                last);
}

/* Send close_notify, once, without waiting for the peer's. */
int ats_tls_shutdown(SSL *ssl)
{
    ERR_clear_error();
    int r = SSL_shutdown(ssl);
    ERR_clear_error();
    return r;
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

void ats_tls_error_string(unsigned long code, char *out, size_t len)
{
    ERR_error_string_n(code, out, len);
}
