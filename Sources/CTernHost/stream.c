// Byte streams for save files and restores: unix sockets, a copy loop and CRC-32C.
// The only place outside cpuid.c where Tern touches raw descriptors and buffers.
#define _GNU_SOURCE
#include "CTernHost.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <stdio.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <sys/un.h>
#include <unistd.h>

#if defined(__x86_64__)
#include <cpuid.h>
#include <nmmintrin.h>
#endif

// ---- CRC-32C ----------------------------------------------------------------------------

static uint32_t crc_table[8][256];
static int crc_table_ready;
static int crc_hardware = -1;

static void crc_make_table(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
        crc_table[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; i++)
        for (int t = 1; t < 8; t++) crc_table[t][i] = (crc_table[t - 1][i] >> 8) ^ crc_table[0][crc_table[t - 1][i] & 0xff];
    crc_table_ready = 1;
}

static uint32_t crc_software(uint32_t crc, const uint8_t *p, size_t n) {
    if (!crc_table_ready) crc_make_table();
    while (n >= 8) {
        uint64_t v;
        memcpy(&v, p, 8);
        v ^= crc;
        crc = crc_table[7][v & 0xff] ^ crc_table[6][(v >> 8) & 0xff] ^ crc_table[5][(v >> 16) & 0xff]
            ^ crc_table[4][(v >> 24) & 0xff] ^ crc_table[3][(v >> 32) & 0xff] ^ crc_table[2][(v >> 40) & 0xff]
            ^ crc_table[1][(v >> 48) & 0xff] ^ crc_table[0][v >> 56];
        p += 8;
        n -= 8;
    }
    while (n--) crc = (crc >> 8) ^ crc_table[0][(crc ^ *p++) & 0xff];
    return crc;
}

#if defined(__x86_64__)
__attribute__((target("sse4.2"))) static uint32_t crc_sse42(uint32_t crc, const uint8_t *p, size_t n) {
    uint64_t c = crc;
    while (n >= 8) {
        uint64_t v;
        memcpy(&v, p, 8);
        c = _mm_crc32_u64(c, v);
        p += 8;
        n -= 8;
    }
    uint32_t c32 = (uint32_t)c;
    while (n--) c32 = _mm_crc32_u8(c32, *p++);
    return c32;
}
#endif

uint32_t tern_crc32c(uint32_t crc, const void *data, size_t length) {
#if defined(__x86_64__)
    if (crc_hardware < 0) {
        unsigned a, b, c, d;
        crc_hardware = __get_cpuid(1, &a, &b, &c, &d) && (c & bit_SSE4_2);
    }
    if (crc_hardware) return ~crc_sse42(~crc, data, length);
#endif
    return ~crc_software(~crc, data, length);
}

// ---- unix sockets -----------------------------------------------------------------------

static int unix_address(const char *path, struct sockaddr_un *address) {
    memset(address, 0, sizeof *address);
    address->sun_family = AF_UNIX;
    if (strlen(path) >= sizeof address->sun_path) {
        errno = ENAMETOOLONG;
        return -1;
    }
    strcpy(address->sun_path, path);
    return 0;
}

int tern_unix_listen(const char *path) {
    struct sockaddr_un address;
    if (unix_address(path, &address) < 0) return -1;
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    unlink(path);
    if (bind(fd, (struct sockaddr *)&address, sizeof address) < 0 || listen(fd, 4) < 0) {
        int saved = errno;
        close(fd);
        errno = saved;
        return -1;
    }
    return fd;
}

int tern_unix_connect(const char *path) {
    struct sockaddr_un address;
    if (unix_address(path, &address) < 0) return -1;
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    if (connect(fd, (struct sockaddr *)&address, sizeof address) < 0) {
        int saved = errno;
        close(fd);
        errno = saved;
        return -1;
    }
    return fd;
}

int tern_tcp_free_port(void) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    struct sockaddr_in address = {.sin_family = AF_INET, .sin_port = 0, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t length = sizeof address;
    int port = -1;
    if (bind(fd, (struct sockaddr *)&address, sizeof address) == 0 && getsockname(fd, (struct sockaddr *)&address, &length) == 0) {
        port = ntohs(address.sin_port);
    }
    int saved = errno;
    close(fd);
    errno = saved;
    return port;
}

// Waits until `fd` is ready for `events` (POLLIN, POLLOUT), for at most `timeout_ms` (0:
// forever), looking at `*cancel` every 100 ms. Returns 1 when ready, 0 on timeout (errno
// ETIMEDOUT), -1 on error or cancellation (errno ECANCELED).
static int wait_ready(int fd, short events, int timeout_ms, const volatile int *cancel) {
    int waited = 0;
    for (;;) {
        if (cancel && *cancel) {
            errno = ECANCELED;
            return -1;
        }
        int slice = 100;
        if (timeout_ms > 0 && timeout_ms - waited < slice) slice = timeout_ms - waited;
        struct pollfd p = {.fd = fd, .events = events};
        int ready = poll(&p, 1, slice);
        if (ready < 0 && errno == EINTR) continue;
        if (ready < 0) return -1;
        if (ready > 0) return 1;
        waited += slice;
        if (timeout_ms > 0 && waited >= timeout_ms) {
            errno = ETIMEDOUT;
            return 0;
        }
    }
}

static int wait_readable(int fd, int timeout_ms, const volatile int *cancel) {
    return wait_ready(fd, POLLIN, timeout_ms, cancel);
}

int tern_accept(int listener, int timeout_ms, const volatile int *cancel) {
    int ready = wait_readable(listener, timeout_ms, cancel);
    if (ready <= 0) return -1;
    return accept4(listener, NULL, NULL, SOCK_CLOEXEC);
}

int tern_tcp_connect(const char *host, int port, int timeout_ms) {
    char service[16];
    snprintf(service, sizeof service, "%d", port);
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *found = NULL;
    int status = getaddrinfo(host, service, &hints, &found);
    if (status != 0) {
        errno = status == EAI_SYSTEM ? errno : EHOSTUNREACH;
        return -1;
    }
    int fd = -1, saved = ECONNREFUSED;
    for (struct addrinfo *a = found; a != NULL && fd < 0; a = a->ai_next) {
        fd = socket(a->ai_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (fd < 0) {
            saved = errno;
            continue;
        }
        int error = 0;
        socklen_t length = sizeof error;
        if (connect(fd, a->ai_addr, a->ai_addrlen) < 0
            && (errno != EINPROGRESS || wait_ready(fd, POLLOUT, timeout_ms, NULL) <= 0
                || getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &length) < 0 || (errno = error) != 0)) {
            saved = errno;
            close(fd);
            fd = -1;
        }
    }
    freeaddrinfo(found);
    if (fd < 0) {
        errno = saved;
        return -1;
    }
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
    return fd;
}

int tern_send_with_fd(int socket, const void *data, size_t length, int fd) {
    const char *bytes = data;
    size_t sent = 0;
    while (sent < length) {
        struct iovec part = {.iov_base = (void *)(bytes + sent), .iov_len = length - sent};
        union {
            struct cmsghdr header;
            char space[CMSG_SPACE(sizeof(int))];
        } control;
        struct msghdr message = {.msg_iov = &part, .msg_iovlen = 1};
        if (sent == 0) {
            // The descriptor rides with the first byte.
            memset(&control, 0, sizeof control);
            message.msg_control = control.space;
            message.msg_controllen = sizeof control.space;
            struct cmsghdr *header = CMSG_FIRSTHDR(&message);
            header->cmsg_level = SOL_SOCKET;
            header->cmsg_type = SCM_RIGHTS;
            header->cmsg_len = CMSG_LEN(sizeof(int));
            memcpy(CMSG_DATA(header), &fd, sizeof(int));
        }
        ssize_t n = sendmsg(socket, &message, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            if (wait_ready(socket, POLLOUT, 5000, NULL) <= 0) return -1;
            continue;
        }
        if (n < 0) return -1;
        sent += (size_t)n;
    }
    return 0;
}

// ---- copy -------------------------------------------------------------------------------

enum { copy_block = 1 << 20 };

tern_copy_result tern_copy(int in, int out, uint64_t limit, uint32_t crc, int idle_timeout_ms, const volatile int *cancel) {
    tern_copy_result result = {.bytes = 0, .crc = crc, .error = 0, .failed_read = 0};
    int out_is_socket = 1;  // sockets get MSG_NOSIGNAL: a vanished peer is an error, not SIGPIPE
    uint8_t *buffer = malloc(copy_block);
    if (!buffer) {
        result.error = ENOMEM;
        return result;
    }
    for (;;) {
        if (cancel && *cancel) {
            result.error = ECANCELED;
            break;
        }
        size_t want = copy_block;
        if (limit) {
            if (result.bytes >= limit) break;
            if (limit - result.bytes < want) want = (size_t)(limit - result.bytes);
        }
        int ready = wait_readable(in, idle_timeout_ms, cancel);
        if (ready <= 0) {
            result.error = ready == 0 ? ETIMEDOUT : errno;
            result.failed_read = ready == 0 || errno != ECANCELED;
            break;
        }
        ssize_t got;
        do got = read(in, buffer, want); while (got < 0 && errno == EINTR);
        if (got < 0) {
            result.error = errno;
            result.failed_read = 1;
            break;
        }
        if (got == 0) break;
        result.crc = tern_crc32c(result.crc, buffer, (size_t)got);
        size_t done = 0;
        while (done < (size_t)got) {
            ssize_t put;
            do {
                if (out_is_socket) {
                    // Without blocking: a peer that stops reading is waited for as a silent
                    // input is (the idle limit, the cancel flag).
                    put = send(out, buffer + done, (size_t)got - done, MSG_NOSIGNAL | MSG_DONTWAIT);
                    if (put < 0 && errno == ENOTSOCK) {
                        out_is_socket = 0;
                        put = -1;
                        errno = EINTR;
                    } else if (put < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
                        int ready = wait_ready(out, POLLOUT, idle_timeout_ms, cancel);
                        if (ready <= 0) {
                            if (ready == 0) errno = ETIMEDOUT;
                            break;
                        }
                        put = -1;
                        errno = EINTR;
                    }
                } else {
                    put = write(out, buffer + done, (size_t)got - done);
                }
            } while (put < 0 && errno == EINTR);
            if (put < 0) {
                result.error = errno;
                break;
            }
            done += (size_t)put;
        }
        if (result.error) break;
        result.bytes += (uint64_t)got;
    }
    free(buffer);
    return result;
}
