/*
 * trace-text-pages: an LD_PRELOAD library that records which pages of a program's code it
 * executes (or reads), for scripts/code-layout/generate.sh.
 *
 * Before main runs, the constructor makes the program's executable segment inaccessible. The
 * first touch of each page then raises SIGSEGV; the handler writes the page's link-time address
 * (8 bytes, little endian) to the file named by TRACE_TEXT_PAGES_OUT, makes the page executable
 * again and returns, so the program goes on. Each page is reported once.
 *
 * The Swift runtime installs its own crash handler: run the program with
 * SWIFT_BACKTRACE=enable=no so this one stays in place.
 *
 * Build: cc -O2 -shared -fPIC -o trace-text-pages.so trace-text-pages.c
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <link.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

static uintptr_t text_start, text_end, load_bias;
static int out_fd = -1;

static int find_text(struct dl_phdr_info *info, size_t size, void *data) {
    (void)size; (void)data;
    if (info->dlpi_name != NULL && info->dlpi_name[0] != '\0') return 0;   /* the main program only */
    for (int i = 0; i < info->dlpi_phnum; i++) {
        const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
        if (ph->p_type == PT_LOAD && (ph->p_flags & PF_X)) {
            load_bias = info->dlpi_addr;
            text_start = (info->dlpi_addr + ph->p_vaddr) & ~(uintptr_t)4095;
            text_end = (info->dlpi_addr + ph->p_vaddr + ph->p_memsz + 4095) & ~(uintptr_t)4095;
        }
    }
    return 1;
}

static void on_fault(int sig, siginfo_t *si, void *ctx) {
    (void)ctx;
    uintptr_t addr = (uintptr_t)si->si_addr;
    if (addr < text_start || addr >= text_end) {     /* a real crash: let it happen */
        signal(sig, SIG_DFL);
        return;
    }
    uintptr_t page = addr & ~(uintptr_t)4095;
    mprotect((void *)page, 4096, PROT_READ | PROT_EXEC);
    uint64_t link_address = page - load_bias;
    if (out_fd >= 0) (void)!write(out_fd, &link_address, sizeof link_address);
}

__attribute__((constructor)) static void trace_text_pages_start(void) {
    const char *env = getenv("TRACE_TEXT_PAGES_OUT");
    if (env == NULL) return;
    static char out[4096];
    strncpy(out, env, sizeof out - 1);
    /* Programs this one starts (QEMU, for ternd) are not traced. */
    unsetenv("LD_PRELOAD");
    unsetenv("TRACE_TEXT_PAGES_OUT");
    dl_iterate_phdr(find_text, NULL);
    if (text_start == 0) return;
    out_fd = open(out, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_fault;
    sa.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigaction(SIGSEGV, &sa, NULL);
    sigaction(SIGBUS, &sa, NULL);
    /* This library's own code is outside the range, so the handler itself never faults here. */
    mprotect((void *)text_start, text_end - text_start, PROT_NONE);
}
