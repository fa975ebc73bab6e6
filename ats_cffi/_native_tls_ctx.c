/* The TLS contexts of ats_cffi._native: see _native_tls_ctx.h. */
#include "_native_tls_ctx.h"

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
