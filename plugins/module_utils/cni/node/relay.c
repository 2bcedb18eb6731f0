/* The compiled CNI executable: relay.py, without an interpreter to start.
 *
 * Built by `cnikit install-plugins` (installer.write_executables) with `cc -O2` when a C compiler is
 * there; one binary, hard-linked under every plugin name (argv[0]'s basename names the plugin).
 * Without a compiler the dash launcher + relay.py do the same job. This program only relays
 * bytes: every CNI decision stays in the Python engine, which it reaches in one of two ways:
 *   - the node agent's socket: `CNIKIT/2 <len name> <len env> <len stdin>\n` + name + environment
 *     (K=V joined by NUL) + stdin; the agent answers `+` once it holds the request, we answer `!`
 *     (go: it runs nothing before, so a request we gave up on never runs twice), then it sends
 *     `<rc> <len stdout> <len stderr>\n` + both (agent.py). The agent must run as root or as us
 *     (SO_PEERCRED), else it is not talked to;
 *   - the engine in-process: exec the engine interpreter, with a memfd copy of stdin.
 * Fallbacks, as in relay.py: no socket, refused, a listener of another uid, or no `+` within
 * ACK_TIMEOUT -> in-process;
 * `+` then the connection drops -> for ADD a DEL in-process first (output discarded), then replay.
 * VERSION is answered from a reply baked in at build time (byte for byte what the engine prints).
 *
 * Baked in with -D, as C string literals: CNIKIT_VERSION_REPLY, CNIKIT_SOCKET, CNIKIT_PYTHON,
 * CNIKIT_LIBDIR, CNIKIT_ENGINE (the `-c` program that runs cni.node.main).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <fcntl.h>
#include <unistd.h>

#define ACK_TIMEOUT 5 /* seconds for a live agent to take a request; it acknowledges before working */

extern char **environ;

/* runtime.py runs a plugin whose executable is one of ours in-process; it recognises this binary by
 * the mark in its first 4 KB (a note section is laid out right after the ELF program headers). */
__attribute__((used, section(".note.cnikit"), aligned(4)))
static const struct { unsigned namesz, descsz, type; char name[8]; char desc[16]; } mark = {
    7, 16, 1, "cnikit", "cnikit.launcher"};

static const char version_reply[] = CNIKIT_VERSION_REPLY;
static const char sock_path[] = CNIKIT_SOCKET;
_Static_assert(sizeof(sock_path) <= sizeof(((struct sockaddr_un *)0)->sun_path), "socket path too long");

struct buf {
    char *p;
    size_t n, cap;
};

static void reserve(struct buf *b, size_t n) {
    if (b->n + n > b->cap) {
        b->cap = (b->n + n) * 2;
        if (!(b->p = realloc(b->p, b->cap)))
            abort();
    }
}

static void put(struct buf *b, const void *data, size_t n) {
    if (!n) /* an empty buffer may have no memory at all */
        return;
    reserve(b, n);
    memcpy(b->p + b->n, data, n);
    b->n += n;
}

static int write_all(int fd, const char *p, size_t n) {
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0)
            return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Append everything up to EOF; -1 on an error (a timeout included). */
static int read_all(int fd, struct buf *b) {
    for (;;) {
        reserve(b, 65536);
        ssize_t r = read(fd, b->p + b->n, b->cap - b->n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return (int)r;
        b->n += (size_t)r;
    }
}

/* A CNI error on stdout (the protocol's way to fail), for what this program can't relay. */
static void die(const char *msg, int err) {
    const char *parts[] = {"{\n    \"code\": 999,\n    \"msg\": \"", msg, "\",\n    \"details\": \"", strerror(err),
                           "\"\n}\n"};
    struct buf b = {0};
    for (size_t i = 0; i < sizeof(parts) / sizeof(parts[0]); i++)
        put(&b, parts[i], strlen(parts[i]));
    write_all(1, b.p, b.n);
    _exit(1);
}

/* Replace this process by the engine running the plugin in-process (returns only on failure). */
static void in_process(const char *self, const struct buf *in) {
    if (in) { /* stdin was consumed here: hand the engine a copy */
        int fd = memfd_create("cni-stdin", 0);
        if (fd < 0 || write_all(fd, in->p, in->n) < 0 || lseek(fd, 0, SEEK_SET) < 0 || dup2(fd, 0) < 0)
            die("cnikit: cannot pass stdin to the engine", errno);
        close(fd);
    }
    char *args[] = {CNIKIT_PYTHON, "-I", "-c", CNIKIT_ENGINE, CNIKIT_LIBDIR, (char *)self, NULL};
    execve(args[0], args, environ);
    die("cnikit: cannot exec the engine interpreter " CNIKIT_PYTHON, errno);
}

/* Run DEL for the attachment in a child (output discarded), before replaying an ADD. */
static void undo_add(const char *self, const struct buf *in) {
    pid_t pid = fork();
    if (pid == 0) {
        int null = open("/dev/null", O_WRONLY);
        dup2(null, 1);
        dup2(null, 2);
        setenv("CNI_COMMAND", "DEL", 1);
        in_process(self, in);
        _exit(127);
    }
    while (pid > 0 && waitpid(pid, NULL, 0) < 0 && errno == EINTR)
        ;
}

/* Send the request; return whether the agent acknowledged it, with its reply (or what arrived of
 * it before the connection dropped) in `reply`. */
static int exchange(const char *name, const struct buf *in, struct buf *reply) {
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    struct timeval tv = {ACK_TIMEOUT, 0};
    struct buf req = {0}, env = {0};
    char head[96], ack = 0;
    int acked = 0, fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);

    memcpy(sa.sun_path, sock_path, sizeof(sock_path));
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv)) < 0 ||
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) < 0 ||
        connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0)
        goto out;
    struct ucred cred;
    socklen_t credlen = sizeof(cred);
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &credlen) < 0 || (cred.uid != 0 && cred.uid != geteuid()))
        goto out; /* not the agent: someone else's socket on the path */
    for (char **e = environ; *e; e++) {
        if (!strchr(*e, '='))
            continue;
        if (env.n)
            put(&env, "", 1);
        put(&env, *e, strlen(*e));
    }
    int hn = snprintf(head, sizeof(head), "CNIKIT/2 %zu %zu %zu\n", strlen(name), env.n, in->n);
    put(&req, head, (size_t)hn);
    put(&req, name, strlen(name));
    put(&req, env.p, env.n);
    put(&req, in->p, in->n);
    for (size_t off = 0; off < req.n;) {
        ssize_t w = send(fd, req.p + off, req.n - off, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0)
            goto out;
        off += (size_t)w;
    }
    while (recv(fd, &ack, 1, 0) < 0 && errno == EINTR)
        ;
    if (ack != '+')
        goto out;
    ssize_t go;
    while ((go = send(fd, "!", 1, MSG_NOSIGNAL)) < 0 && errno == EINTR)
        ;
    if (go != 1) /* the agent went away before our go: it ran nothing */
        goto out;
    acked = 1;
    shutdown(fd, SHUT_WR);
    tv.tv_sec = 0; /* from here the agent is working: operations may wait on locks */
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    read_all(fd, reply);
out:
    if (fd >= 0)
        close(fd);
    free(req.p);
    free(env.p);
    return acked;
}

static int number(const char **p, const char *end, size_t *v) {
    const char *s = *p;
    for (*v = 0; *p < end && **p >= '0' && **p <= '9'; (*p)++)
        *v = *v * 10 + (size_t)(**p - '0');
    return *p > s && *p - s < 12;
}

/* Print a complete reply and return its exit code; -1 if it was cut short. */
static int relay(const struct buf *reply) {
    const char *p = reply->p, *end = reply->p + reply->n;
    size_t rc, nout, nerr;
    if (!reply->n || !number(&p, end, &rc) || p == end || *p++ != ' ' || !number(&p, end, &nout) ||
        p == end || *p++ != ' ' || !number(&p, end, &nerr) || p == end || *p++ != '\n' ||
        (size_t)(end - p) != nout + nerr || rc > 255)
        return -1;
    write_all(2, p + nout, nerr);
    write_all(1, p, nout);
    return (int)rc;
}

int main(int argc, char **argv) {
    const char *command = getenv("CNI_COMMAND"), *self = argc > 0 ? argv[0] : "";
    const char *name = strrchr(self, '/') ? strrchr(self, '/') + 1 : self;
    struct buf in = {0}, reply = {0};
    int rc;

    if (command && !strcmp(command, "VERSION"))
        return write_all(1, version_reply, sizeof(version_reply) - 1) < 0;
    /* Like the Go skel (and the engine), the about text (no CNI_COMMAND) does not read stdin. */
    int reads_stdin = command && *command;
    if (reads_stdin && read_all(0, &in) < 0)
        die("cnikit: cannot read stdin", errno);
    int acked = exchange(name, &in, &reply);
    if (acked && (rc = relay(&reply)) >= 0)
        return rc;
    if (acked && !strcmp(command ? command : "", "ADD"))
        undo_add(self, &in);
    in_process(self, reads_stdin ? &in : NULL);
    return 1;
}
