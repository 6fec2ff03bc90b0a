// Scheduling policies of threads (a migrating guest's vCPUs yield to its migration).
#define _GNU_SOURCE
#include "CTernHost.h"

#include <linux/capability.h>
#include <sched.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

int tern_thread_policy(int tid, int *policy, int *priority) {
    int found = sched_getscheduler(tid);
    if (found < 0) return -1;
    struct sched_param param = {0};
    if (sched_getparam(tid, &param) != 0) return -1;
    *policy = found & ~SCHED_RESET_ON_FORK;
    *priority = param.sched_priority;
    return 0;
}

int tern_set_thread_policy(int tid, int policy, int priority) {
    struct sched_param param = {.sched_priority = priority};
    return sched_setscheduler(tid, policy, &param);
}

int tern_idle_policy(void) { return SCHED_IDLE; }

int tern_may_leave_idle_policy(void) {
    struct __user_cap_header_struct header = {.version = _LINUX_CAPABILITY_VERSION_3, .pid = 0};
    struct __user_cap_data_struct data[2] = {{0}};
    if (syscall(SYS_capget, &header, data) == 0 &&
        (data[CAP_SYS_NICE / 32].effective & (1u << (CAP_SYS_NICE % 32))))
        return 1;
    // Without the capability, leaving SCHED_IDLE for nice 0 needs RLIMIT_NICE of 20 or more.
    struct rlimit limit;
    return getrlimit(RLIMIT_NICE, &limit) == 0 && (limit.rlim_cur == RLIM_INFINITY || limit.rlim_cur >= 20);
}
