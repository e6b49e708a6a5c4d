/*
 * Starter of polling-c: it listens on $PORT and answers every request with
 * 501 Not Implemented. Your task (see README.md): turn it into an HTTP/1.0 file server in
 * ONE thread that waits for all its clients at once with epoll(7).
 *
 * Serve GET of files under $DOCROOT (default /srv/www) on port $PORT (default 8080):
 * 200 with Content-Type, Content-Length and the file; 404 when there is no such file;
 * 400 for a request that is not a valid GET, a path with "..", or a request larger than
 * 8 KiB. Close the connection after the response (HTTP/1.0).
 *
 * Build and test it with:  make && labctl test polling-c --submission <this folder>
 *
 * The plan, step by step (each TODO below is one of them):
 *   1. listening socket non-blocking; epoll_create1(); watch it with EPOLLIN;
 *   2. the loop: epoll_wait() is the ONLY place the server sleeps;
 *   3. listener ready: accept4(..., SOCK_NONBLOCK) every waiting client until EAGAIN,
 *      give each a struct conn, watch it with EPOLLIN;
 *   4. client readable: read() what has arrived, append it to the request; once it holds
 *      "\r\n\r\n", prepare the response and switch the client to EPOLLOUT;
 *   5. client writable: write() from the offset you reached; a partial write is normal:
 *      keep the new offset and wait for the next EPOLLOUT; when all is sent, close;
 *   6. on any error of one client (ECONNRESET, EPIPE, read() == 0): close that client
 *      only, and keep serving the others.
 */

#define _GNU_SOURCE /* memmem(), accept4() */

#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* TODO (3): the state of one client, kept between two wake-ups of epoll_wait(). E.g.:
 *
 *   struct conn {
 *       int fd;
 *       enum { READING, WRITING } phase;
 *       char req[8192];  size_t req_len;           // the request received so far
 *       char *out;       size_t out_len, out_off;  // the response, and how much is sent
 *       // (or: an open file descriptor and how much of it is sent, read chunk by chunk)
 *   };
 *
 * Put a pointer to it in epoll_event.data.ptr when you register the client's socket:
 * epoll_wait() hands it back with the event.
 */

static const char NOT_IMPLEMENTED[] =
    "HTTP/1.0 501 Not Implemented\r\nContent-Type: text/plain\r\nContent-Length: 16\r\n"
    "Connection: close\r\n\r\nnot implemented\n";

int main(void)
{
    const char *port_text = getenv("PORT");
    const char *docroot = getenv("DOCROOT");
    int port = port_text != NULL ? atoi(port_text) : 8080;
    if (docroot == NULL)
        docroot = "/srv/www";

    /* Without this, writing to a client that has gone away kills the server (SIGPIPE);
     * with it, write() returns -1 with errno EPIPE: close that client and carry on. */
    signal(SIGPIPE, SIG_IGN);
    setvbuf(stdout, NULL, _IOLBF, 0);

    /* TODO (1): add SOCK_NONBLOCK, so that accept() returns EAGAIN instead of waiting. */
    int listener = socket(AF_INET, SOCK_STREAM, 0);
    if (listener < 0) {
        perror("socket");
        return 1;
    }
    int one = 1;
    setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((unsigned short)port),
                               .sin_addr.s_addr = htonl(INADDR_ANY)};
    if (bind(listener, (struct sockaddr *)&addr, sizeof addr) < 0 || listen(listener, 1024) < 0) {
        perror("bind/listen");
        return 1;
    }
    printf("starter server on port %d (docroot %s)\n", port, docroot);

    /* TODO (1): int ep = epoll_create1(0); register the listener with EPOLLIN
     *           (epoll_ctl(ep, EPOLL_CTL_ADD, listener, &ev)). */

    for (;;) {
        /* TODO (2): replace this blocking accept() by epoll_wait(ep, events, N, -1), and
         * handle each event: the listener (3), a readable client (4), a writable one (5).
         * As it is, this server waits in accept(), then serves one client at a time. */
        int client = accept(listener, NULL, NULL);
        if (client < 0)
            continue;
        /* TODO (4): read the request (it may arrive in many pieces), parse its first line
         * ("GET /path HTTP/1.0"), find the file under docroot, build the response. */
        ssize_t sent = write(client, NOT_IMPLEMENTED, sizeof NOT_IMPLEMENTED - 1);
        /* TODO (5): on a non-blocking socket write() may send only part of it: keep the
         * offset, and send the rest when epoll reports EPOLLOUT. */
        (void)sent;
        close(client);
    }
}
