/*
 * Mutant of polling-c: a correct HTTP/1.0 file server, but BLOCKING and one client at a
 * time. It sleeps in accept(), then in read() on that one client until its request is
 * whole, then in write() until the client has taken the whole file. Every answer is
 * right; but while it waits for one slow, silent or slow-reading client, nobody else is
 * served, and idle it sleeps in accept(), not in an event loop.
 */

#define _GNU_SOURCE /* memmem() */

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAX_REQUEST 8192

static char docroot[PATH_MAX];

/* Write all of buf, waiting as long as it takes (the blocking way); -1 if the client is gone. */
static int write_all(int fd, const char *buf, size_t len)
{
    while (len > 0) {
        ssize_t n = write(fd, buf, len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        buf += n;
        len -= (size_t)n;
    }
    return 0;
}

static void respond_text(int fd, int status, const char *reason, const char *body)
{
    char head[256];
    int n = snprintf(head, sizeof head,
                     "HTTP/1.0 %d %s\r\nContent-Type: text/plain\r\nContent-Length: %zu\r\n"
                     "Connection: close\r\n\r\n%s", status, reason, strlen(body), body);
    write_all(fd, head, (size_t)n);
}

/* Is the request line "GET /target HTTP/1.x", three words, visible ASCII? */
static int valid_get(char *line, char **target)
{
    for (char *p = line; *p; p++)
        if ((*p < 0x21 || *p > 0x7e) && *p != ' ')
            return 0;
    char *method = line, *path = strchr(line, ' ');
    if (path == NULL)
        return 0;
    *path++ = '\0';
    char *version = strchr(path, ' ');
    if (version == NULL)
        return 0;
    *version++ = '\0';
    if (strchr(version, ' ') != NULL || strcmp(method, "GET") != 0 || path[0] != '/')
        return 0;
    if (strlen(version) != 8 || strncmp(version, "HTTP/1.", 7) != 0 || version[7] < '0' || version[7] > '9')
        return 0;
    *target = path;
    return 1;
}

static void serve(int fd)
{
    char req[MAX_REQUEST + 1];
    size_t len = 0;
    char *end = NULL;
    while (end == NULL) { /* blocks in read() until the whole request is there */
        if (len == MAX_REQUEST) {
            respond_text(fd, 400, "Bad Request", "request too large\n");
            return;
        }
        ssize_t n = read(fd, req + len, MAX_REQUEST - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return; /* closed or reset before the request was whole */
        len += (size_t)n;
        end = memmem(req, len, "\r\n\r\n", 4);
    }
    char *eol = memmem(req, (size_t)(end - req) + 2, "\r\n", 2); /* the request line's end */
    int has_nul = memchr(req, '\0', (size_t)(eol - req)) != NULL;
    *eol = '\0';
    char *target;
    if (has_nul || !valid_get(req, &target) || strstr(target, "..") != NULL) {
        respond_text(fd, 400, "Bad Request", "bad request\n");
        return;
    }
    char *query = strchr(target, '?');
    if (query != NULL)
        *query = '\0';
    char path[PATH_MAX];
    int len_path = snprintf(path, sizeof path, "%s%s%s", docroot, target,
                            target[strlen(target) - 1] == '/' ? "index.html" : "");
    int file = len_path < (int)sizeof path ? open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK) : -1;
    struct stat st;
    if (file < 0 || fstat(file, &st) < 0 || !S_ISREG(st.st_mode)) {
        if (file >= 0)
            close(file);
        respond_text(fd, 404, "Not Found", "not found\n");
        return;
    }
    char buf[16384];
    int n = snprintf(buf, sizeof buf, "HTTP/1.0 200 OK\r\nContent-Type: application/octet-stream\r\n"
                                      "Content-Length: %lld\r\nConnection: close\r\n\r\n", (long long)st.st_size);
    if (write_all(fd, buf, (size_t)n) == 0) {
        ssize_t got;
        while ((got = read(file, buf, sizeof buf)) > 0) /* blocks in write() for a slow reader */
            if (write_all(fd, buf, (size_t)got) < 0)
                break;
    }
    close(file);
}

int main(void)
{
    const char *port_text = getenv("PORT");
    const char *root = getenv("DOCROOT");
    int port = port_text != NULL ? atoi(port_text) : 8080;
    snprintf(docroot, sizeof docroot, "%s", root != NULL && root[0] ? root : "/srv/www");
    signal(SIGPIPE, SIG_IGN);
    setvbuf(stdout, NULL, _IOLBF, 0);

    int listener = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((unsigned short)port),
                               .sin_addr.s_addr = htonl(INADDR_ANY)};
    if (bind(listener, (struct sockaddr *)&addr, sizeof addr) < 0 || listen(listener, 128) < 0) {
        perror("bind/listen");
        return 1;
    }
    printf("blocking C server on port %d, serving %s\n", port, docroot);
    for (;;) {
        int client = accept(listener, NULL, NULL); /* sleeps here when idle */
        if (client < 0)
            continue;
        serve(client);
        shutdown(client, SHUT_WR);
        close(client);
    }
}
