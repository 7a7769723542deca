// The Linux test environment's two ends of a vsock connection (busybox has no vsock client and
// no Unix-socket server). Built statically by outer-machine.sh with the host's gcc.
//
//   vsock-helper serve PATH         outer machine: accept one connection on a Unix stream socket
//                                   at PATH, read a line, answer "host got: LINE\n", exit
//   vsock-helper ask CID PORT TEXT  inner guest: connect to CID:PORT over AF_VSOCK, send
//                                   "TEXT\n", print the answer's first line, exit 0 if one came
#include <linux/vm_sockets.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

static int read_line(int fd, char *buf, size_t size) {
    size_t n = 0;
    while (n + 1 < size) {
        ssize_t r = read(fd, buf + n, 1);
        if (r <= 0) break;
        if (buf[n] == '\n') break;
        n++;
    }
    buf[n] = 0;
    return (int)n;
}

static int write_all(int fd, const char *s, size_t n) {
    while (n > 0) {
        ssize_t w = write(fd, s, n);
        if (w <= 0) return -1;
        s += w; n -= (size_t)w;
    }
    return 0;
}

static int serve(const char *path) {
    int s = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un a = { .sun_family = AF_UNIX };
    if (s < 0 || strlen(path) >= sizeof a.sun_path) { perror("socket"); return 1; }
    strcpy(a.sun_path, path);
    unlink(path);
    if (bind(s, (struct sockaddr *)&a, sizeof a) != 0 || listen(s, 1) != 0) { perror("bind/listen"); return 1; }
    int c = accept(s, NULL, NULL);
    if (c < 0) { perror("accept"); return 1; }
    char line[256], reply[300];
    read_line(c, line, sizeof line);
    snprintf(reply, sizeof reply, "host got: %s\n", line);
    write_all(c, reply, strlen(reply));
    close(c);
    unlink(path);
    return 0;
}

static int ask(unsigned cid, unsigned port, const char *text) {
    int s = socket(AF_VSOCK, SOCK_STREAM, 0);
    if (s < 0) { perror("socket(AF_VSOCK)"); return 1; }
    struct sockaddr_vm a = { .svm_family = AF_VSOCK, .svm_cid = cid, .svm_port = port };
    if (connect(s, (struct sockaddr *)&a, sizeof a) != 0) { perror("connect"); return 1; }
    if (write_all(s, text, strlen(text)) != 0 || write_all(s, "\n", 1) != 0) { perror("write"); return 1; }
    char line[300];
    if (read_line(s, line, sizeof line) == 0) { fprintf(stderr, "no answer\n"); return 1; }
    printf("%s\n", line);
    return 0;
}

int main(int argc, char **argv) {
    if (argc == 3 && strcmp(argv[1], "serve") == 0) return serve(argv[2]);
    if (argc == 5 && strcmp(argv[1], "ask") == 0) return ask((unsigned)atoi(argv[2]), (unsigned)atoi(argv[3]), argv[4]);
    fprintf(stderr, "usage: vsock-helper serve PATH | ask CID PORT TEXT\n");
    return 2;
}
