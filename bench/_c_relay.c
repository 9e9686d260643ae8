/*
 * A minimal TLS-terminating relay to PostgreSQL, in C: the ceiling for any wire front.
 *
 * The emulator benchmark compiles and runs it beside the emulator when a C compiler and
 * OpenSSL's headers are there (`_c_relay SOCKET CERT KEY`; it prints its port). Like
 * `_tls_relay.py` it answers SSLRequest, wraps the connection in TLS and copies bytes both
 * ways to the PostgreSQL unix socket: no token check, no decoding, no rules. One process per
 * connection, blocking I/O and poll(2): the least work a relay can do per message. What it
 * costs is what the extra hop itself costs on this machine, whatever language does the rest.
 * A measuring stick, not a server: no limits, no shutdown beyond being killed.
 */
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/ssl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

static int write_all(int fd, const char *buf, int len) {
    while (len > 0) {
        ssize_t n = write(fd, buf, (size_t)len);
        if (n <= 0) return -1;
        buf += n;
        len -= (int)n;
    }
    return 0;
}

static int read_exactly(int fd, char *buf, int len) {
    while (len > 0) {
        ssize_t n = read(fd, buf, (size_t)len);
        if (n <= 0) return -1;
        buf += n;
        len -= (int)n;
    }
    return 0;
}

static void relay(SSL_CTX *ctx, int client, const char *socket_path) {
    char buf[65536];
    int one = 1;
    setsockopt(client, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (read_exactly(client, buf, 8) < 0 || write_all(client, "S", 1) < 0) return;
    SSL *ssl = SSL_new(ctx);
    SSL_set_fd(ssl, client);
    if (SSL_accept(ssl) <= 0) return;
    int backend = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un addr = {0};
    addr.sun_family = AF_UNIX;
    strncpy(addr.sun_path, socket_path, sizeof addr.sun_path - 1);
    if (connect(backend, (struct sockaddr *)&addr, sizeof addr) < 0) return;
    struct pollfd fds[2] = {{client, POLLIN, 0}, {backend, POLLIN, 0}};
    for (;;) {
        if (SSL_pending(ssl) > 0) {
            fds[0].revents = POLLIN;
            fds[1].revents = 0;
        } else if (poll(fds, 2, -1) < 0) {
            return;
        }
        if (fds[0].revents) {
            int n = SSL_read(ssl, buf, sizeof buf);
            if (n <= 0 || write_all(backend, buf, n) < 0) return;
        }
        if (fds[1].revents) {
            ssize_t n = read(backend, buf, sizeof buf);
            if (n <= 0 || SSL_write(ssl, buf, (int)n) <= 0) return;
        }
    }
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s SOCKET CERT KEY\n", argv[0]);
        return 2;
    }
    signal(SIGCHLD, SIG_IGN); /* children are reaped by the kernel */
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (ctx == NULL || SSL_CTX_use_certificate_chain_file(ctx, argv[2]) != 1 ||
        SSL_CTX_use_PrivateKey_file(ctx, argv[3], SSL_FILETYPE_PEM) != 1) {
        fprintf(stderr, "cannot load the certificate or key\n");
        return 2;
    }
    int listener = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in addr = {0};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof addr;
    if (bind(listener, (struct sockaddr *)&addr, sizeof addr) < 0 || listen(listener, 64) < 0 ||
        getsockname(listener, (struct sockaddr *)&addr, &len) < 0) {
        perror("listen");
        return 2;
    }
    printf("%d\n", ntohs(addr.sin_port));
    fflush(stdout);
    for (;;) {
        int client = accept(listener, NULL, NULL);
        if (client < 0) continue;
        if (fork() == 0) {
            close(listener);
            relay(ctx, client, argv[1]);
            _exit(0);
        }
        close(client);
    }
}
