/* Guest-side writer for `cargo xtask bench writer-overhead`: N write(2) calls of one
 * 64-byte line to PATH (opened O_APPEND, truncated first), then prints the thread's CPU
 * time over the loop in ns. The host bench's loop in C, because the guest has no Rust
 * toolchain and the loop must be nothing but the syscall. */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static long long thread_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return (long long)t.tv_sec * 1000000000LL + t.tv_nsec;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: write_loop PATH WRITES\n");
        return 2;
    }
    long writes = atol(argv[2]);
    int fd = open(argv[1], O_WRONLY | O_CREAT | O_TRUNC | O_APPEND, 0644);
    if (fd < 0) {
        perror(argv[1]);
        return 1;
    }
    char line[64];
    memset(line, 'x', sizeof line);
    line[63] = '\n';
    long long started = thread_ns();
    for (long i = 0; i < writes; i++) {
        if (write(fd, line, sizeof line) != (ssize_t)sizeof line) {
            perror("write");
            return 1;
        }
    }
    long long elapsed = thread_ns() - started;
    close(fd);
    printf("%lld\n", elapsed);
    return 0;
}
