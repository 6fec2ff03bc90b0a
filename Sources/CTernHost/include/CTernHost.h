#ifndef CTERNHOST_H
#define CTERNHOST_H

#include <stddef.h>
#include <stdint.h>

/// Executes CPUID with EAX = leaf and ECX = subleaf on the calling processor and stores the four
/// output registers. Returns 0 on x86, -1 on other architectures (outputs are then zero).
int tern_cpuid(uint32_t leaf, uint32_t subleaf, uint32_t *eax, uint32_t *ebx, uint32_t *ecx, uint32_t *edx);

/// CRC-32C (Castagnoli) of `length` bytes, continuing from `crc` (start with 0). Uses the SSE4.2
/// CRC32 instruction when the processor has it.
uint32_t tern_crc32c(uint32_t crc, const void *data, size_t length);

/// Creates a unix stream socket listening at `path` (an existing file there is replaced).
/// Returns the descriptor, or -1 with errno set.
int tern_unix_listen(const char *path);

/// Connects a unix stream socket to `path`. Returns the descriptor, or -1 with errno set.
int tern_unix_connect(const char *path);

/// Connects a TCP socket to `host`:`port` (a name or an address), waiting at most `timeout_ms`
/// milliseconds (0: the system's own limit). Returns a blocking descriptor, or -1 with errno set.
int tern_tcp_connect(const char *host, int port, int timeout_ms);

/// Writes all `length` bytes of `data` to the unix socket `socket`, passing the descriptor `fd`
/// with the first of them (SCM_RIGHTS), waiting while the socket is full (at most 5 s at a time).
/// Returns 0, or -1 with errno set.
int tern_send_with_fd(int socket, const void *data, size_t length, int fd);

/// A TCP port on 127.0.0.1 that nothing listens on now (the kernel's pick), or -1 with errno set.
int tern_tcp_free_port(void);

/// Accepts one connection on a listening socket, waiting at most `timeout_ms` milliseconds and
/// giving up when `*cancel` becomes non-zero (looked at every 100 ms; `cancel` may be NULL).
/// Returns the connection's descriptor, or -1 with errno set (ETIMEDOUT, ECANCELED).
int tern_accept(int listener, int timeout_ms, const volatile int *cancel);

/// The result of ``tern_copy``.
typedef struct {
    /// Bytes copied.
    uint64_t bytes;
    /// CRC-32C of the bytes copied, continuing from the `crc` given.
    uint32_t crc;
    /// 0, or the errno of the failing read (`failed_read` = 1) or write (`failed_read` = 0).
    int error;
    int failed_read;
} tern_copy_result;

/// Copies from `in` to `out` until end of input or until `limit` bytes (0: no limit), computing
/// the CRC-32C of what passed. A read, or a write to a socket, that waits longer than
/// `idle_timeout_ms` (0: forever) ends the copy with ETIMEDOUT. `*cancel` (may be NULL) is looked at every 100 ms and between
/// blocks: non-zero stops the copy with ECANCELED.
tern_copy_result tern_copy(int in, int out, uint64_t limit, uint32_t crc, int idle_timeout_ms, const volatile int *cancel);

/// Thread `tid`'s scheduling policy (SCHED_*) and static priority. 0, or -1 with errno set.
int tern_thread_policy(int tid, int *policy, int *priority);

/// Gives thread `tid` a scheduling policy and static priority (sched_setscheduler). 0, or -1
/// with errno set.
int tern_set_thread_policy(int tid, int policy, int priority);

/// SCHED_IDLE: the thread runs on processor time no other thread wants.
int tern_idle_policy(void);

/// 1 if this process may take a thread out of SCHED_IDLE again (CAP_SYS_NICE, or an
/// RLIMIT_NICE that allows nice 0), else 0.
int tern_may_leave_idle_policy(void);

#endif
