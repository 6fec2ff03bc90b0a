#include "CTernHost.h"

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

int tern_cpuid(uint32_t leaf, uint32_t subleaf, uint32_t *eax, uint32_t *ebx, uint32_t *ecx, uint32_t *edx) {
#if defined(__x86_64__) || defined(__i386__)
    unsigned int a = 0, b = 0, c = 0, d = 0;
    __cpuid_count(leaf, subleaf, a, b, c, d);
    *eax = a; *ebx = b; *ecx = c; *edx = d;
    return 0;
#else
    *eax = *ebx = *ecx = *edx = 0;
    return -1;
#endif
}
