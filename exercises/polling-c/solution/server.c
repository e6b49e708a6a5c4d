/*
 * Reference solution of polling-c: an HTTP/1.0 file server in ONE thread, on epoll(7).
 *
 * The only place this server sleeps is epoll_wait(): the kernel puts the thread to sleep
 * (state S) until one of the sockets it watches is ready, and wakes it when a packet
 * makes one ready. Then the server does only the work that cannot block:
 *
 *   - the listening socket is readable: accept() every waiting client, until EAGAIN;
 *   - a client socket is readable: read() what has arrived and keep it, until the blank
 *     line that ends the request's headers (a request may arrive a few bytes at a time);
 *   - a client socket is writable: write() as much of the response as the socket takes
 *     (a partial write is normal on a non-blocking socket), keep the offset, come back
 *     at the next EPOLLOUT.
 *
 * Every socket is non-blocking, so no read(), write() or accept() ever waits: a slow or
 * silent client costs a few bytes of state (struct conn), not a thread. epoll has no
 * FD_SETSIZE limit (select() stops at descriptor 1023), so thousands of idle clients fit,
 * up to the process's nofile limit.
 *
 * The protocol: GET of a file under $DOCROOT (default /srv/www) on port $PORT (default
 * 8080). 200 with Content-Type and Content-Length and the file; 404 when there is no such
 * file; 400 for anything that is not a valid GET, a path with "..", or a request larger
 * than 8 KiB. One request per connection (HTTP/1.0): the server closes after answering.
 */

#define _GNU_SOURCE /* memmem(), accept4() */

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#define MAX_REQUEST 8192          /* a request (line + headers) larger than this gets 400 */
#define OUT_CHUNK 16384           /* bytes of the response held in memory at a time */
#define MAX_EVENTS 256            /* events taken from the kernel per epoll_wait() */
#define WRITE_BUDGET (256 * 1024) /* bytes written to one client per wake-up (fairness) */
#define BACKLOG 1024              /* completed connections the kernel queues before accept() */
#define MAX_DRAIN 65536           /* bytes read and dropped after the response, at most */

/* What a connection is doing: reading its request, writing its response, then draining
 * (reading and dropping what the client still sends until it closes too). */
enum phase { READING, WRITING, DRAINING };

/*
 * One client's state between two wake-ups. A blocking server keeps this on its stack
 * while it waits in read(); an event loop must keep it here, because it returns to
 * epoll_wait() between every two pieces of work.
 */
struct conn {
    int fd;             /* the client's socket (non-blocking) */
    enum phase phase;

    /* READING: the request received so far. */
    size_t req_len;
    char req[MAX_REQUEST];
    size_t drained;     /* DRAINING: bytes dropped so far */

    /* WRITING: the bytes to send are out[out_off .. out_len); when they are all sent,
     * the next chunk of the file (file_fd, file_left bytes still to read) is read in. */
    size_t out_len;
    size_t out_off;
    int file_fd;        /* the file being sent, or -1 (error responses are all in out) */
    off_t file_left;
    char out[OUT_CHUNK];
};

static int epoll_fd = -1;
static int listen_fd = -1;
static int spare_fd = -1;      /* a descriptor kept in reserve for running out of them */
static char docroot[PATH_MAX]; /* $DOCROOT without a trailing '/' */

/* ---- connections ----------------------------------------------------------------------- */

/* Forget a client: stop watching it, close its socket and its file, free its state. */
static void conn_close(struct conn *c)
{
    epoll_ctl(epoll_fd, EPOLL_CTL_DEL, c->fd, NULL); /* close() would do it too; say it */
    close(c->fd);
    if (c->file_fd >= 0)
        close(c->file_fd);
    free(c);
}

/* Change what epoll reports for this client: EPOLLIN while reading, EPOLLOUT while writing. */
static bool conn_watch(struct conn *c, uint32_t events)
{
    struct epoll_event ev = {.events = events, .data.ptr = c};
    return epoll_ctl(epoll_fd, EPOLL_CTL_MOD, c->fd, &ev) == 0;
}

/* ---- the HTTP side ------------------------------------------------------------------------ */

static const char *reason(int status)
{
    switch (status) {
    case 200: return "OK";
    case 400: return "Bad Request";
    case 404: return "Not Found";
    default:  return "Error";
    }
}

static const char *content_type(const char *path)
{
    static const struct { const char *ext, *type; } types[] = {
        {".html", "text/html"}, {".htm", "text/html"}, {".txt", "text/plain"},
        {".css", "text/css"}, {".js", "text/javascript"}, {".json", "application/json"},
        {".png", "image/png"}, {".jpg", "image/jpeg"}, {".jpeg", "image/jpeg"},
        {".gif", "image/gif"}, {".svg", "image/svg+xml"},
    };
    const char *dot = strrchr(path, '.');
    if (dot != NULL && strchr(dot, '/') == NULL)
        for (size_t i = 0; i < sizeof types / sizeof types[0]; i++)
            if (strcmp(dot, types[i].ext) == 0)
                return types[i].type;
    return "application/octet-stream";
}

/* Put a whole small response (head and text body) in the output buffer. */
static void respond_text(struct conn *c, int status, const char *body)
{
    int n = snprintf(c->out, sizeof c->out,
                     "HTTP/1.0 %d %s\r\nContent-Type: text/plain\r\nContent-Length: %zu\r\n"
                     "Connection: close\r\n\r\n%s",
                     status, reason(status), strlen(body), body);
    c->out_len = (size_t)n; /* always fits: the bodies are a few words */
    c->out_off = 0;
}

/*
 * Is the request line "GET <target> HTTP/1.x" with exactly one space between the three
 * words and nothing but visible ASCII in them? On success, point *target at the target
 * inside the request and set *target_len.
 */
static bool parse_request_line(const char *line, size_t len, const char **target, size_t *target_len)
{
    const char *word[3];
    size_t word_len[3];
    size_t words = 0, start = 0;

    for (size_t i = 0; i <= len; i++) {
        if (i < len && line[i] != ' ') {
            if (line[i] < 0x21 || line[i] > 0x7e) /* control byte, or not ASCII */
                return false;
            continue;
        }
        if (i == start || words == 3) /* an empty word (two spaces), or a fourth word */
            return false;
        word[words] = line + start;
        word_len[words] = i - start;
        words++;
        start = i + 1;
    }
    if (words != 3)
        return false;
    if (word_len[0] != 3 || memcmp(word[0], "GET", 3) != 0)
        return false;
    if (word[1][0] != '/')
        return false;
    if (word_len[2] != 8 || memcmp(word[2], "HTTP/1.", 7) != 0 || word[2][7] < '0' || word[2][7] > '9')
        return false;
    *target = word[1];
    *target_len = word_len[1];
    return true;
}

/* Every header line (between the request line and the blank line) has a colon. */
static bool headers_valid(const char *from, const char *end)
{
    while (from < end) {
        const char *eol = memmem(from, (size_t)(end - from), "\r\n", 2);
        if (eol == NULL)
            eol = end;
        if (memchr(from, ':', (size_t)(eol - from)) == NULL)
            return false;
        from = eol + 2;
    }
    return true;
}

/*
 * Open the file a target names: 200 (c->file_fd open, *size set), or 404. A directory
 * means its index.html.
 */
static int open_target(struct conn *c, const char *target, size_t target_len, char *path, size_t path_size,
                       off_t *size)
{
    int n = snprintf(path, path_size, "%s%.*s%s", docroot, (int)target_len, target,
                     target[target_len - 1] == '/' ? "index.html" : "");
    if (n < 0 || (size_t)n >= path_size)
        return 404; /* longer than any path there can be */
    for (int tries = 0; tries < 2; tries++) {
        /* O_NONBLOCK: opening a FIFO must not block the whole server (a regular file ignores it). */
        int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
        if (fd < 0)
            return 404;
        struct stat st;
        if (fstat(fd, &st) < 0) {
            close(fd);
            return 404;
        }
        if (S_ISREG(st.st_mode)) {
            c->file_fd = fd;
            *size = st.st_size;
            return 200;
        }
        close(fd);
        if (!S_ISDIR(st.st_mode) || strlen(path) + sizeof "/index.html" > path_size)
            return 404;
        strcat(path, "/index.html"); /* a directory: try its index.html once */
    }
    return 404;
}

/* The request is complete (it holds "\r\n\r\n"): decide the answer and fill the output. */
static void prepare_response(struct conn *c)
{
    const char *end = memmem(c->req, c->req_len, "\r\n\r\n", 4);
    const char *eol = memmem(c->req, c->req_len, "\r\n", 2); /* the first line's end, <= end */
    const char *target;
    size_t target_len;

    if (!parse_request_line(c->req, (size_t)(eol - c->req), &target, &target_len) ||
        !headers_valid(eol + 2, end + 2)) {
        respond_text(c, 400, "bad request\n");
        return;
    }
    const char *query = memchr(target, '?', target_len); /* /page.html?x=1 serves /page.html */
    if (query != NULL)
        target_len = (size_t)(query - target);
    /* No "..": a client must not climb out of the docroot (GET /../../etc/passwd). */
    if (memmem(target, target_len, "..", 2) != NULL) {
        respond_text(c, 400, "bad request\n");
        return;
    }
    char path[PATH_MAX];
    off_t size = 0;
    if (open_target(c, target, target_len, path, sizeof path, &size) != 200) {
        respond_text(c, 404, "not found\n");
        return;
    }
    /* The head now; the body is read from the file chunk by chunk as the socket takes it. */
    int n = snprintf(c->out, sizeof c->out,
                     "HTTP/1.0 200 OK\r\nContent-Type: %s\r\nContent-Length: %jd\r\n"
                     "Connection: close\r\n\r\n",
                     content_type(path), (intmax_t)size);
    c->out_len = (size_t)n;
    c->out_off = 0;
    c->file_left = size;
}

/* ---- event handlers ---------------------------------------------------------------------- */

/*
 * The whole response is sent. Why not close() at once: when bytes of the client are still
 * unread (a request cut at 8 KiB, or still on the way), the kernel answers close() with a
 * reset (RST), and the client may lose the response before it reads it. So end our side
 * only (shutdown: a FIN after the response), and drop what still comes until the client
 * closes its side (read() returns 0); then close.
 */
static void finish(struct conn *c)
{
    if (c->file_fd >= 0) {
        close(c->file_fd);
        c->file_fd = -1;
    }
    c->phase = DRAINING;
    c->drained = 0;
    if (shutdown(c->fd, SHUT_WR) < 0 || !conn_watch(c, EPOLLIN))
        conn_close(c);
}

/* EPOLLIN after the response: drop what arrives; close at the client's FIN (or too much). */
static void on_drain(struct conn *c)
{
    ssize_t n = read(c->fd, c->req, sizeof c->req);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
        return;
    if (n <= 0 || (c->drained += (size_t)n) > MAX_DRAIN)
        conn_close(c);
}

/* EPOLLIN on a client: take what has arrived; once the request is whole, switch to writing. */
static void on_readable(struct conn *c)
{
    ssize_t n = read(c->fd, c->req + c->req_len, sizeof c->req - c->req_len);
    if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
            return;    /* nothing after all: wait for the next EPOLLIN */
        conn_close(c); /* ECONNRESET and friends: forget this client, serve the others */
        return;
    }
    if (n == 0) {      /* the client closed before finishing its request */
        conn_close(c);
        return;
    }
    /* Look for the blank line only where it can newly be: it may straddle two reads. */
    size_t from = c->req_len >= 3 ? c->req_len - 3 : 0;
    c->req_len += (size_t)n;
    if (memmem(c->req + from, c->req_len - from, "\r\n\r\n", 4) != NULL)
        prepare_response(c);
    else if (c->req_len == sizeof c->req)
        respond_text(c, 400, "request too large\n");
    else
        return;        /* not whole yet: keep it, wait for more */
    c->phase = WRITING;
    if (!conn_watch(c, EPOLLOUT))
        conn_close(c);
}

/*
 * EPOLLOUT on a client: write what the socket takes. write() on a non-blocking socket may
 * take only part of the buffer (the peer's window and the socket's send buffer are full):
 * keep the offset and return to epoll_wait() at EAGAIN; epoll says when there is room again.
 */
static void on_writable(struct conn *c)
{
    size_t budget = WRITE_BUDGET;
    for (;;) {
        if (c->out_off == c->out_len) { /* all of out sent: the next chunk of the file, or done */
            if (c->file_fd < 0 || c->file_left == 0) {
                finish(c); /* the whole response is sent (HTTP/1.0: then the connection ends) */
                return;
            }
            size_t want = c->file_left < (off_t)sizeof c->out ? (size_t)c->file_left : sizeof c->out;
            /* A regular file: read() comes from the page cache; it never waits for a peer. */
            ssize_t got = read(c->file_fd, c->out, want);
            if (got <= 0) {    /* read error, or the file shrank: the response cannot be finished */
                conn_close(c);
                return;
            }
            c->out_len = (size_t)got;
            c->out_off = 0;
            c->file_left -= got;
        }
        if (budget == 0)
            return; /* enough for one turn: let the other clients have theirs; epoll brings us back */
        ssize_t n = write(c->fd, c->out + c->out_off, c->out_len - c->out_off);
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return; /* the socket is full: wait for the next EPOLLOUT */
            if (errno == EINTR)
                continue;
            conn_close(c); /* EPIPE, ECONNRESET: the client is gone */
            return;
        }
        c->out_off += (size_t)n; /* maybe only part of it: the rest goes next time round */
        budget = (size_t)n < budget ? budget - (size_t)n : 0;
    }
}

/* EPOLLIN on the listener: accept every client waiting, until accept4() says EAGAIN. */
static void accept_clients(void)
{
    for (;;) {
        /* SOCK_NONBLOCK: the new socket is non-blocking from the start (no fcntl needed). */
        int fd = accept4(listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;  /* that client left already; the next one may be there */
            if (errno == EMFILE || errno == ENFILE) {
                /* Out of descriptors. The listener stays readable and epoll would wake us
                 * again at once, forever (a busy loop). Give back the spare descriptor,
                 * accept the client and close it (it sees the connection end), take the
                 * spare again. */
                if (spare_fd >= 0) {
                    close(spare_fd);
                    int extra = accept(listen_fd, NULL, NULL);
                    if (extra >= 0)
                        close(extra);
                    spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
                }
                return;
            }
            /* EAGAIN: nobody is waiting any more (the normal way out). Anything else
             * (ENOBUFS, ENOMEM): try again at the next wake-up. */
            return;
        }
        struct conn *c = malloc(sizeof *c);
        if (c == NULL) {
            close(fd);
            continue;
        }
        c->fd = fd;
        c->phase = READING;
        c->req_len = c->drained = 0;
        c->out_len = c->out_off = 0;
        c->file_fd = -1;
        c->file_left = 0;
        /* Level-triggered EPOLLIN: reported as long as unread bytes wait on the socket. */
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
        if (epoll_ctl(epoll_fd, EPOLL_CTL_ADD, fd, &ev) < 0) {
            close(fd);
            free(c);
        }
    }
}

/* ---- setup and the loop --------------------------------------------------------------------- */

static int listen_on(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one); /* restart without waiting */
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                               .sin_addr.s_addr = htonl(INADDR_ANY)};
    if (bind(fd, (struct sockaddr *)&addr, sizeof addr) < 0 || listen(fd, BACKLOG) < 0) {
        close(fd);
        return -1;
    }
    return fd;
}

int main(void)
{
    const char *port_text = getenv("PORT");
    const char *root = getenv("DOCROOT");
    int port = port_text != NULL ? atoi(port_text) : 8080;
    if (port <= 0 || port > 65535) {
        fprintf(stderr, "PORT=%s is not a port number\n", port_text);
        return 2;
    }
    if (root == NULL || root[0] == '\0')
        root = "/srv/www";
    if (strlen(root) >= sizeof docroot) {
        fprintf(stderr, "DOCROOT is too long\n");
        return 2;
    }
    strcpy(docroot, root);
    for (size_t len = strlen(docroot); len > 1 && docroot[len - 1] == '/'; len--)
        docroot[len - 1] = '\0';

    /* A client that closes while we write would raise SIGPIPE and kill the server: with
     * SIGPIPE ignored, write() returns -1 with errno EPIPE instead, which we handle. */
    signal(SIGPIPE, SIG_IGN);
    setvbuf(stdout, NULL, _IOLBF, 0); /* a line reaches `labctl logs` when it is printed */

    listen_fd = listen_on(port);
    if (listen_fd < 0) {
        perror("listen");
        return 1;
    }
    epoll_fd = epoll_create1(EPOLL_CLOEXEC);
    if (epoll_fd < 0) {
        perror("epoll_create1");
        return 1;
    }
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL}; /* NULL: the listener */
    if (epoll_ctl(epoll_fd, EPOLL_CTL_ADD, listen_fd, &ev) < 0) {
        perror("epoll_ctl");
        return 1;
    }
    spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    printf("polling-c server (epoll) on port %d, serving %s\n", port, docroot);

    struct epoll_event events[MAX_EVENTS];
    for (;;) {
        /* The one place this server sleeps: until some socket is ready (no timeout). */
        int n = epoll_wait(epoll_fd, events, MAX_EVENTS, -1);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            perror("epoll_wait");
            return 1;
        }
        for (int i = 0; i < n; i++) {
            struct conn *c = events[i].data.ptr;
            uint32_t what = events[i].events;
            if (c == NULL)
                accept_clients();
            else if (what & EPOLLERR)
                conn_close(c); /* reset by the client, or another error: forget it */
            else if (c->phase == READING && (what & (EPOLLIN | EPOLLHUP)))
                on_readable(c); /* on HUP, read() returns what is left, then 0: closed there */
            else if (c->phase == WRITING && (what & (EPOLLOUT | EPOLLHUP)))
                on_writable(c); /* on HUP, write() fails with EPIPE: closed there */
            else if (c->phase == DRAINING && (what & (EPOLLIN | EPOLLHUP)))
                on_drain(c);
        }
    }
}
