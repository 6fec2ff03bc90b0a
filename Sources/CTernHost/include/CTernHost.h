#ifndef CTERNHOST_H
#define CTERNHOST_H

#include <stdint.h>

/// Executes CPUID with EAX = leaf and ECX = subleaf on the calling processor and stores the four
/// output registers. Returns 0 on x86, -1 on other architectures (outputs are then zero).
int tern_cpuid(uint32_t leaf, uint32_t subleaf, uint32_t *eax, uint32_t *ebx, uint32_t *ecx, uint32_t *edx);

#endif
