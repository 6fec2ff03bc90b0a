#!/usr/bin/env python3
"""Generate TernCPU's x86 CPU data files from libvirt's CPU map and QEMU.

Writes two JSON resources loaded by the TernCPU module:

  Sources/TernCPU/Resources/features.json
      One entry per x86 feature defined by libvirt's installed
      x86_features.xml (default /usr/share/libvirt/cpu_map), in libvirt's
      order, followed by the features newer libvirt releases define and the
      installed one lacks (NEWER_LIBVIRT_FEATURES below, transcribed from
      libvirt 11.x: CPUID 0x7.1/0x7.2/0x24/0x80000021 bits, the newer
      IA32_ARCH_CAPABILITIES bits, the vmx-* VMX capability MSR features,
      ...).  Each entry has the CPUID leaf/subleaf/register/bit (or MSR
      index/half/bit), libvirt's migratable='no' flag, QEMU's property name
      when it differs, the Linux /proc/cpuinfo flag when it differs, and a
      list of alternative spellings ("aliases").

  Sources/TernCPU/Resources/models.json
      Every CPU model and model version QEMU offers (query-cpu-definitions),
      named libvirt-style where an unversioned name exists (e.g. Haswell-noTSX
      for Haswell-v2), with vendor/family/model/stepping and the list of
      features (canonical libvirt names) each model enables, read through
      QMP `query-cpu-model-expansion` (type "full", cross-checked against
      "static"), plus models and versions the installed QEMU lacks
      (SapphireRapids, GraniteRapids, EPYC-Genoa, EPYC-Milan-v2,
      EPYC-Rome-v3/v4, the removed Icelake-Client), hand-transcribed from
      QEMU's target/i386/cpu.c (see HAND_MODELS below).  Features living in
      the VMX capability MSRs are left out of model feature lists (see
      MODEL_EXCLUDE_VMX_MSR_FEATURES).

Facts and where they come from:
  * bit positions, canonical names, migratability, libvirt aliases:
    libvirt's x86_features.xml, then NEWER_LIBVIRT_FEATURES;
  * libvirt model names and vendors: libvirt's x86_<Model>.xml files;
  * QEMU property name -> bit: found by starting QEMU (TCG, -S, microvm) with
    `-cpu base,<prop>=on` for every boolean CPU property and reading the CPU's
    QOM "feature-words"/"filtered-features" (CPUID) or QEMU's
    "MSR(xxxH).name [bit n]" warning (MSR features).  libvirt and QEMU names
    are joined on identical bit positions, never on spelling;
  * model contents: `query-cpu-model-expansion` under TCG.  QEMU's TCG
    accelerator forces `vme=off` on every model (tcg_default_props), so the
    value of `vme` alone is taken from a second expansion under KVM when
    /dev/kvm is usable; otherwise from QEMU's model table (VME is defined by
    every model except qemu64 and qemu32).  QEMU sets `hypervisor` on every
    model at load time (it is not part of any model definition, and libvirt's
    models never list it), so it is left out of model feature lists;
  * Linux flag names: LINUX_NAMES below, transcribed from the kernel's
    arch/x86/include/asm/cpufeatures.h (flags hidden with "" are omitted).

The script is idempotent: re-running it with the same QEMU/libvirt produces
byte-identical files.  It validates its output (JSON parses, every model
feature exists, no duplicate model names/aliases, no alias shared between
features or equal to another feature's name, bits in range) and exits
non-zero on failure.  Python 3 standard library only.

Usage:  scripts/generate-cpu-data.py [--qemu qemu-system-x86_64]
            [--cpu-map /usr/share/libvirt/cpu_map] [--out-dir DIR]
            [--no-kvm] [--jobs N]
"""

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor

SCRIPT_DIR = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUT_DIR = os.path.join(SCRIPT_DIR, "..", "Sources", "TernCPU", "Resources")

# ---------------------------------------------------------------------------
# Hand-maintained knowledge (everything else is read from the installed tools)
# ---------------------------------------------------------------------------

# Linux /proc/cpuinfo flag for a libvirt feature, where it differs from the
# libvirt name.  From arch/x86/include/asm/cpufeatures.h (v6.6).  Features
# Linux hides ("") or does not know are absent.  Linux synthesises the flags
# "ibrs", "ibpb", "stibp", "ssbd" from either the Intel or the AMD bit; they
# match libvirt's names for the Intel/AMD-specific features already, so the
# other vendor's feature (amd-stibp, amd-ssbd, spec-ctrl) gets no flag.
LINUX_NAMES = {
    "ds": "dts",
    "pclmuldq": "pclmulqdq",
    "sse4.1": "sse4_1",
    "sse4.2": "sse4_2",
    "tsc-deadline": "tsc_deadline_timer",
    "cmt": "cqm",
    "intel-pt": "intel_pt",
    "sha-ni": "sha_ni",
    "avx512vbmi2": "avx512_vbmi2",
    "avx512vnni": "avx512_vnni",
    "avx512bitalg": "avx512_bitalg",
    "avx512-vpopcntdq": "avx512_vpopcntdq",
    "bus-lock-detect": "bus_lock_detect",
    "sgxlc": "sgx_lc",
    "avx512-4vnniw": "avx512_4vnniw",
    "avx512-4fmaps": "avx512_4fmaps",
    "avx512-vp2intersect": "avx512_vp2intersect",
    "md-clear": "md_clear",
    "tsx-ldtrk": "tsxldtrk",
    "arch-lbr": "arch_lbr",
    "amx-bf16": "amx_bf16",
    "avx512-fp16": "avx512_fp16",
    "amx-tile": "amx_tile",
    "amx-int8": "amx_int8",
    "arch-capabilities": "arch_capabilities",
    "avx-vnni": "avx_vnni",
    "avx512-bf16": "avx512_bf16",
    "mbm_total": "cqm_mbm_total",
    "mbm_local": "cqm_mbm_local",
    "cr8legacy": "cr8_legacy",
    "invtsc": "nonstop_tsc",
    "virt-ssbd": "virt_ssbd",
    "svm-lock": "svm_lock",
    "nrip-save": "nrip_save",
    "tsc-scale": "tsc_scale",
    "vmcb-clean": "vmcb_clean",
    "pause-filter": "pausefilter",
    "v-vmsave-vmload": "v_vmsave_vmload",
    "split-lock-detect": "split_lock_detect",
    # features from NEWER_LIBVIRT_FEATURES
    "flush-l1d": "flush_l1d",
    "overflow-recov": "overflow_recov",
    "perfmon-v2": "perfmon_v2",
}

# Other common spellings (compiler flags, vendor documentation).
COMMON_ALIASES = {
    "abm": ["lzcnt"],
    "pni": ["sse3"],
    "pclmuldq": ["pclmul"],
    "fma": ["fma3"],
    "rdrand": ["rdrnd"],
    "cx8": ["cmpxchg8b"],
    "cx16": ["cmpxchg16b"],
    "bmi1": ["bmi"],
    "sha-ni": ["sha"],
    "avx512vbmi": ["avx512_vbmi", "avx512-vbmi"],
    "avx512vbmi2": ["avx512-vbmi2"],
    "avx512vnni": ["avx512-vnni"],
    "avx512bitalg": ["avx512-bitalg"],
    "avx512-vpopcntdq": ["avx512vpopcntdq"],
    "avx512-4vnniw": ["avx5124vnniw"],
    "avx512-4fmaps": ["avx5124fmaps"],
    "avx512-vp2intersect": ["avx512vp2intersect"],
    "avx512-fp16": ["avx512fp16"],
    "avx512-bf16": ["avx512bf16"],
    "avx-vnni": ["avxvnni"],
    "avx-ifma": ["avxifma"],
    "avx-vnni-int8": ["avxvnniint8"],
    "avx-vnni-int16": ["avxvnniint16"],
    "avx-ne-convert": ["avxneconvert"],
    "prefetchiti": ["prefetchi"],
    "auto-ibrs": ["autoibrs"],
}

# QEMU sets these on every model when it loads it; not part of any model.
MODEL_EXCLUDED_FEATURES = {"hypervisor"}

# When KVM is unavailable: QEMU models whose definition lacks CPUID_VME.
MODELS_WITHOUT_VME = {"qemu64", "qemu32"}

# Model families in output order (QEMU base names, i.e. without -vN).
GENERIC_ORDER = ["486", "pentium", "pentium2", "pentium3", "coreduo", "n270",
                 "core2duo", "qemu32", "kvm32", "qemu64", "kvm64"]
INTEL_ORDER = ["Conroe", "Penryn", "Nehalem", "Westmere", "SandyBridge",
               "IvyBridge", "Haswell", "Broadwell", "Skylake-Client",
               "Skylake-Server", "Denverton", "KnightsMill",
               "Cascadelake-Server", "Snowridge", "Cooperlake",
               "Icelake-Client", "Icelake-Server", "SapphireRapids", "GraniteRapids",
               "SierraForest"]
AMD_ORDER = ["athlon", "phenom", "Opteron_G1", "Opteron_G2", "Opteron_G3",
             "Opteron_G4", "Opteron_G5", "EPYC", "EPYC-Rome", "EPYC-Milan",
             "EPYC-Genoa"]
HYGON_ORDER = ["Dhyana"]
QEMU_NON_MODELS = {"max", "host", "base"}

QEMU_VENDORS = {"GenuineIntel": "Intel", "AuthenticAMD": "AMD",
                "HygonGenuine": "Hygon"}

# ---------------------------------------------------------------------------
# Features newer libvirt releases define and libvirt 9.0 lacks
# ---------------------------------------------------------------------------
#
# Transcribed from libvirt 11.x src/cpu_map/x86_features.xml (the version
# generated by libvirt's sync_qemu_features_i386.py from QEMU's
# feature_word_info, as stored in the yossiovadia/libvirt mirror at commit
# 2590ae59959d9ef12fcca5f8bdb0c617e0f97337): every feature of that file
# that libvirt 9.0 does not define, in that file's order.  They are appended
# after the installed libvirt's features, so the installed file's order is
# kept; a name the installed libvirt already defines is skipped.  Rows:
#   ("cpuid", (leaf, subleaf), register, {bit: name, ...})
#   ("msr",   index,           register, {bit: name, ...})
# MSR bits are numbered within the named 32-bit half (libvirt's
# <msr index=... edx=... eax=.../>).  None is migratable='no'.
NEWER_LIBVIRT_SOURCE = "libvirt 11.x x86_features.xml"
NEWER_LIBVIRT_FEATURES = [
    ("cpuid", (0x7, 0), "ebx", {6: "fdp-excptn-only", 13: "zero-fcs-fds"}),
    ("cpuid", (0x7, 0), "edx", {28: "flush-l1d"}),
    ("cpuid", (0x7, 1), "eax", {
        0: "sha512", 1: "sm3", 2: "sm4", 7: "cmpccxadd", 10: "fzrm",
        11: "fsrs", 12: "fsrc", 17: "fred", 18: "lkgs", 19: "wrmsrns",
        21: "amx-fp16", 23: "avx-ifma", 26: "lam"}),
    ("cpuid", (0x7, 1), "edx", {
        4: "avx-vnni-int8", 5: "avx-ne-convert", 8: "amx-complex",
        10: "avx-vnni-int16", 14: "prefetchiti", 19: "avx10"}),
    ("cpuid", (0x7, 2), "edx", {
        0: "intel-psfd", 1: "ipred-ctrl", 2: "rrsba-ctrl", 3: "ddpd-u",
        4: "bhi-ctrl", 5: "mcdt-no"}),
    ("cpuid", (0x12, 0), "eax", {11: "sgx-edeccssa"}),
    ("cpuid", (0x12, 1), "eax", {10: "sgx-aex-notify"}),
    ("cpuid", (0x24, 0), "ebx", {
        16: "avx10-128", 17: "avx10-256", 18: "avx10-512"}),
    ("cpuid", (0x80000007, 0), "ebx", {0: "overflow-recov", 1: "succor"}),
    ("cpuid", (0x80000008, 0), "ebx", {17: "stibp-always-on",
                                       28: "amd-psfd"}),
    ("cpuid", (0x8000000a, 0), "edx", {25: "vnmi"}),
    ("cpuid", (0x80000021, 0), "eax", {
        0: "no-nested-data-bp", 2: "lfence-always-serializing",
        6: "null-sel-clr-base", 8: "auto-ibrs", 24: "eraps", 27: "sbpb",
        28: "ibpb-brtype", 29: "srso-no", 30: "srso-user-kernel-no"}),
    ("cpuid", (0x80000022, 0), "eax", {0: "perfmon-v2"}),
    # IA32_ARCH_CAPABILITIES
    ("msr", 0x10a, "eax", {
        13: "sbdr-ssdp-no", 14: "fbsdp-no", 15: "psdp-no", 17: "fb-clear",
        24: "pbrsb-no", 26: "gds-no", 27: "rfds-no", 28: "rfds-clear"}),
    # IA32_VMX_BASIC
    ("msr", 0x480, "edx", {
        22: "vmx-ins-outs", 23: "vmx-true-ctls", 24: "vmx-any-errcode",
        26: "vmx-nested-exception"}),
    # IA32_VMX_MISC
    ("msr", 0x485, "eax", {
        5: "vmx-store-lma", 6: "vmx-activity-hlt",
        7: "vmx-activity-shutdown", 8: "vmx-activity-wait-sipi",
        29: "vmx-vmwrite-vmexit-fields", 30: "vmx-zero-len-inject"}),
    # IA32_VMX_PROCBASED_CTLS2
    ("msr", 0x48b, "eax", {
        0: "vmx-apicv-xapic", 1: "vmx-ept", 2: "vmx-desc-exit",
        3: "vmx-rdtscp-exit", 4: "vmx-apicv-x2apic", 5: "vmx-vpid",
        6: "vmx-wbinvd-exit", 7: "vmx-unrestricted-guest",
        8: "vmx-apicv-register", 9: "vmx-apicv-vid", 10: "vmx-ple",
        11: "vmx-rdrand-exit", 12: "vmx-invpcid-exit", 13: "vmx-vmfunc",
        14: "vmx-shadow-vmcs", 15: "vmx-encls-exit", 16: "vmx-rdseed-exit",
        17: "vmx-pml", 20: "vmx-xsaves", 25: "vmx-tsc-scaling",
        26: "vmx-enable-user-wait-pause"}),
    # IA32_VMX_EPT_VPID_CAP
    ("msr", 0x48c, "eax", {
        0: "vmx-ept-execonly", 6: "vmx-page-walk-4", 7: "vmx-page-walk-5",
        8: "vmx-ept-uc", 14: "vmx-ept-wb", 16: "vmx-ept-2mb",
        17: "vmx-ept-1gb", 20: "vmx-invept", 21: "vmx-eptad",
        22: "vmx-ept-advanced-exitinfo", 25: "vmx-invept-single-context",
        26: "vmx-invept-all-context"}),
    ("msr", 0x48c, "edx", {
        0: "vmx-invvpid", 8: "vmx-invvpid-single-addr",
        9: "vmx-invvpid-single-context", 10: "vmx-invvpid-all-context",
        11: "vmx-invvpid-single-context-noglobals"}),
    # IA32_VMX_TRUE_PINBASED_CTLS
    ("msr", 0x48d, "eax", {
        0: "vmx-intr-exit", 3: "vmx-nmi-exit", 5: "vmx-vnmi",
        6: "vmx-preemption-timer", 7: "vmx-posted-intr"}),
    # IA32_VMX_TRUE_PROCBASED_CTLS
    ("msr", 0x48e, "eax", {
        2: "vmx-vintr-pending", 3: "vmx-tsc-offset", 7: "vmx-hlt-exit",
        9: "vmx-invlpg-exit", 10: "vmx-mwait-exit", 11: "vmx-rdpmc-exit",
        12: "vmx-rdtsc-exit", 15: "vmx-cr3-load-noexit",
        16: "vmx-cr3-store-noexit", 19: "vmx-cr8-load-exit",
        20: "vmx-cr8-store-exit", 21: "vmx-flexpriority",
        22: "vmx-vnmi-pending", 23: "vmx-movdr-exit", 24: "vmx-io-exit",
        25: "vmx-io-bitmap", 27: "vmx-mtf", 28: "vmx-msr-bitmap",
        29: "vmx-monitor-exit", 30: "vmx-pause-exit",
        31: "vmx-secondary-ctls"}),
    # IA32_VMX_TRUE_EXIT_CTLS
    ("msr", 0x48f, "eax", {
        2: "vmx-exit-nosave-debugctl", 12: "vmx-exit-load-perf-global-ctrl",
        15: "vmx-exit-ack-intr", 18: "vmx-exit-save-pat",
        19: "vmx-exit-load-pat", 20: "vmx-exit-save-efer",
        21: "vmx-exit-load-efer", 22: "vmx-exit-save-preemption-timer",
        23: "vmx-exit-clear-bndcfgs", 25: "vmx-exit-clear-rtit-ctl",
        29: "vmx-exit-load-pkrs", 31: "vmx-exit-secondary-ctls"}),
    # IA32_VMX_TRUE_ENTRY_CTLS
    ("msr", 0x490, "eax", {
        2: "vmx-entry-noload-debugctl", 9: "vmx-entry-ia32e-mode",
        13: "vmx-entry-load-perf-global-ctrl", 14: "vmx-entry-load-pat",
        15: "vmx-entry-load-efer", 16: "vmx-entry-load-bndcfgs",
        18: "vmx-entry-load-rtit-ctl", 22: "vmx-entry-load-pkrs",
        23: "vmx-entry-load-fred"}),
    # IA32_VMX_VMFUNC
    ("msr", 0x491, "eax", {0: "vmx-eptp-switching"}),
]

# libvirt's own <alias> entries for the features above.
NEWER_LIBVIRT_ALIASES = {
    "vmx-invvpid-single-context-noglobals":
        ["vmx-invept-single-context-noglobals"],
}

# QEMU property name where it differs from libvirt's, for the features above
# (QEMU 8.x-10.x target/i386/cpu.c feature_word_info; every other feature
# above has the same name in QEMU).  The installed QEMU's own spelling, found
# by probing, takes precedence.  QEMU gives bit 41 of IA32_VMX_EPT_VPID_CAP
# (libvirt's vmx-invvpid-single-context) no name of its own: it reuses
# "vmx-invept-single-context", so no QEMU name is recorded for it.
NEWER_QEMU_NAMES = {
    "vmx-invvpid-single-context-noglobals":
        "vmx-invept-single-context-noglobals",
}

# VMX capability MSRs (IA32_VMX_BASIC .. IA32_VMX_VMFUNC).  Features in these
# MSRs are listed in features.json but left out of every model's feature
# list: libvirt 9.0's models (which Tern's tests compare against) carry none,
# and the QEMU 7.2 expansions would otherwise add ~60 of them to each Intel
# model.  Set to False to list them in the QEMU-expanded models (the
# hand-transcribed models below do not transcribe the VMX words).
MODEL_EXCLUDE_VMX_MSR_FEATURES = True
VMX_MSR_RANGE = range(0x480, 0x492)

# ---------------------------------------------------------------------------
# Models the installed QEMU lacks, hand-transcribed
# ---------------------------------------------------------------------------
#
# Each entry is either a full definition ("qemu_features": the CPUID and
# IA32_ARCH_CAPABILITIES feature words of QEMU's builtin_x86_defs entry, as
# QEMU property names; VMX words are not transcribed, see above), or a
# version derived from another record ("base": its name in models.json,
# "on"/"off": the version's PropValue list, applied cumulatively as QEMU
# does).  "qemu_name" is QEMU's versioned name, used for ordering.  Skipped
# when the installed QEMU already offers a model of that name.
QEMU_GIT = "QEMU 10.x git target/i386/cpu.c (qemu/qemu@0048035a)"
_SPR_GNR_COMMON = [
    # FEAT_1_EDX
    "fpu", "vme", "de", "pse", "tsc", "msr", "pae", "mce", "cx8", "apic",
    "sep", "mtrr", "pge", "mca", "cmov", "pat", "pse36", "clflush", "mmx",
    "fxsr", "sse", "sse2",
    # FEAT_1_ECX
    "pni", "pclmulqdq", "ssse3", "fma", "cx16", "pcid", "sse4.1", "sse4.2",
    "x2apic", "movbe", "popcnt", "tsc-deadline", "aes", "xsave", "avx",
    "f16c", "rdrand",
    # FEAT_8000_0001_EDX / ECX, FEAT_8000_0008_EBX
    "syscall", "nx", "pdpe1gb", "rdtscp", "lm",
    "lahf-lm", "abm", "3dnowprefetch",
    "wbnoinvd",
    # FEAT_7_0_EBX
    "fsgsbase", "bmi1", "hle", "avx2", "smep", "bmi2", "erms", "invpcid",
    "rtm", "avx512f", "avx512dq", "rdseed", "adx", "smap", "avx512ifma",
    "clflushopt", "clwb", "avx512cd", "sha-ni", "avx512bw", "avx512vl",
    # FEAT_7_0_ECX
    "avx512vbmi", "umip", "pku", "avx512vbmi2", "gfni", "vaes",
    "vpclmulqdq", "avx512vnni", "avx512bitalg", "avx512-vpopcntdq", "la57",
    "rdpid", "bus-lock-detect",
    # FEAT_7_0_EDX
    "fsrm", "serialize", "tsx-ldtrk", "amx-bf16", "avx512-fp16", "amx-tile",
    "amx-int8", "spec-ctrl", "arch-capabilities", "ssbd",
    # FEAT_ARCH_CAPABILITIES
    "rdctl-no", "ibrs-all", "skip-l1dfl-vmentry", "mds-no", "pschange-mc-no",
    "taa-no",
    # FEAT_XSAVE, FEAT_6_EAX
    "xsaveopt", "xsavec", "xgetbv1", "xsaves", "xfd",
    "arat",
    # FEAT_7_1_EAX
    "avx-vnni", "avx512-bf16", "fzrm", "fsrs", "fsrc",
]
HAND_MODELS = [
    {
        "name": "Icelake-Client", "aliases": ["Icelake-Client-v1"],
        "qemu_name": "Icelake-Client-v1",
        "vendor": "Intel", "family": 6, "model": 126, "stepping": 0,
        "source": "QEMU 7.0 Icelake-Client-v1 (hand-transcribed from the "
                  "definition removed in QEMU 7.1)",
        "qemu_features": [
            # FEAT_1_EDX
            "vme", "sse2", "sse", "fxsr", "mmx", "clflush", "pse36", "pat",
            "cmov", "mca", "pge", "mtrr", "sep", "apic", "cx8", "mce", "pae",
            "msr", "tsc", "pse", "de", "fpu",
            # FEAT_1_ECX
            "avx", "xsave", "aes", "popcnt", "x2apic", "sse4.2", "sse4.1",
            "cx16", "ssse3", "pclmulqdq", "pni", "tsc-deadline", "fma",
            "movbe", "pcid", "f16c", "rdrand",
            # FEAT_8000_0001_EDX / ECX, FEAT_8000_0008_EBX
            "lm", "rdtscp", "nx", "syscall",
            "abm", "lahf-lm", "3dnowprefetch",
            "wbnoinvd",
            # FEAT_7_0_EBX
            "fsgsbase", "bmi1", "hle", "avx2", "smep", "bmi2", "erms",
            "invpcid", "rtm", "rdseed", "adx", "smap",
            # FEAT_7_0_ECX
            "avx512vbmi", "umip", "pku", "avx512vbmi2", "gfni", "vaes",
            "vpclmulqdq", "avx512vnni", "avx512bitalg", "avx512-vpopcntdq",
            # FEAT_7_0_EDX
            "spec-ctrl", "ssbd",
            # FEAT_XSAVE, FEAT_6_EAX
            "xsaveopt", "xsavec", "xgetbv1",
            "arat",
        ],
    },
    {
        "name": "Icelake-Client-noTSX", "aliases": ["Icelake-Client-v2"],
        "qemu_name": "Icelake-Client-v2", "base": "Icelake-Client",
        "off": ["hle", "rtm"],
        "source": "QEMU 7.0 Icelake-Client-v2 (hand-transcribed from the "
                  "definition removed in QEMU 7.1)",
    },
    {
        "name": "Icelake-Client-v3", "aliases": [],
        "qemu_name": "Icelake-Client-v3", "base": "Icelake-Client-noTSX",
        "on": ["xsaves", "vmx-xsaves"],
        "source": "QEMU 7.0 Icelake-Client-v3 (hand-transcribed from the "
                  "definition removed in QEMU 7.1)",
    },
    {
        "name": "SapphireRapids", "aliases": ["SapphireRapids-v1"],
        "qemu_name": "SapphireRapids-v1",
        "vendor": "Intel", "family": 6, "model": 143, "stepping": 4,
        "source": QEMU_GIT + " SapphireRapids-v1 (hand-transcribed; "
                  "model added in QEMU 8.0, not in QEMU 7.2)",
        "qemu_features": _SPR_GNR_COMMON,
    },
    {
        "name": "SapphireRapids-v2", "aliases": [],
        "qemu_name": "SapphireRapids-v2", "base": "SapphireRapids",
        "on": ["sbdr-ssdp-no", "fbsdp-no", "psdp-no"],
        "source": QEMU_GIT + " SapphireRapids-v2 (hand-transcribed)",
    },
    {
        "name": "SapphireRapids-v3", "aliases": [],
        "qemu_name": "SapphireRapids-v3", "base": "SapphireRapids-v2",
        "on": ["ss", "tsc-adjust", "cldemote", "movdiri", "movdir64b"],
        "source": QEMU_GIT + " SapphireRapids-v3 (hand-transcribed)",
    },
    {
        "name": "GraniteRapids", "aliases": ["GraniteRapids-v1"],
        "qemu_name": "GraniteRapids-v1",
        "vendor": "Intel", "family": 6, "model": 173, "stepping": 0,
        "source": QEMU_GIT + " GraniteRapids-v1 (hand-transcribed; "
                  "not in QEMU 7.2)",
        "qemu_features": _SPR_GNR_COMMON + [
            # FEAT_ARCH_CAPABILITIES (beyond SapphireRapids-v1)
            "sbdr-ssdp-no", "fbsdp-no", "psdp-no", "pbrsb-no",
            # FEAT_7_1_EAX, FEAT_7_1_EDX, FEAT_7_2_EDX
            "amx-fp16",
            "prefetchiti",
            "mcdt-no",
        ],
    },
    {
        "name": "GraniteRapids-v2", "aliases": [],
        "qemu_name": "GraniteRapids-v2", "base": "GraniteRapids",
        # also sets avx10-version=1 (not a feature flag)
        "on": ["ss", "tsc-adjust", "cldemote", "movdiri", "movdir64b",
               "avx10", "avx10-128", "avx10-256", "avx10-512"],
        "stepping": 1,
        "source": QEMU_GIT + " GraniteRapids-v2 (hand-transcribed)",
    },
    {
        "name": "EPYC-Rome-v3", "aliases": [],
        "qemu_name": "EPYC-Rome-v3", "base": "EPYC-Rome-v2",
        # v3 changes only model-id and cache information
        "source": QEMU_GIT + " EPYC-Rome-v3 (hand-transcribed; features "
                  "as EPYC-Rome-v2)",
    },
    {
        "name": "EPYC-Rome-v4", "aliases": [],
        "qemu_name": "EPYC-Rome-v4", "base": "EPYC-Rome-v3",
        "off": ["xsaves"],
        "source": QEMU_GIT + " EPYC-Rome-v4 (hand-transcribed)",
    },
    {
        "name": "EPYC-Milan-v2", "aliases": [],
        "qemu_name": "EPYC-Milan-v2", "base": "EPYC-Milan",
        "on": ["vaes", "vpclmulqdq", "stibp-always-on", "amd-psfd",
               "no-nested-data-bp", "lfence-always-serializing",
               "null-sel-clr-base"],
        "source": QEMU_GIT + " EPYC-Milan-v2 (hand-transcribed; QEMU 8.0+)",
    },
    {
        "name": "EPYC-Genoa", "aliases": ["EPYC-Genoa-v1"],
        "qemu_name": "EPYC-Genoa-v1",
        "vendor": "AMD", "family": 25, "model": 17, "stepping": 0,
        "source": "QEMU 8.1 EPYC-Genoa-v1 (hand-transcribed; not in QEMU "
                  "7.2; unchanged in " + QEMU_GIT + ")",
        # every feature of this model is also in Genoa (checked)
        "superset_of": "EPYC-Milan-v2",
        "qemu_features": [
            # FEAT_1_EDX
            "fpu", "vme", "de", "pse", "tsc", "msr", "pae", "mce", "cx8",
            "apic", "sep", "mtrr", "pge", "mca", "cmov", "pat", "pse36",
            "clflush", "mmx", "fxsr", "sse", "sse2",
            # FEAT_1_ECX
            "pni", "pclmulqdq", "monitor", "ssse3", "fma", "cx16", "pcid",
            "sse4.1", "sse4.2", "movbe", "popcnt", "aes", "xsave", "avx",
            "f16c", "rdrand",
            # FEAT_8000_0001_EDX
            "syscall", "nx", "mmxext", "fxsr-opt", "pdpe1gb", "rdtscp", "lm",
            # FEAT_8000_0001_ECX
            "lahf-lm", "svm", "cr8legacy", "abm", "sse4a", "misalignsse",
            "3dnowprefetch", "osvw", "topoext", "perfctr-core",
            # FEAT_8000_0008_EBX
            "clzero", "xsaveerptr", "wbnoinvd", "ibpb", "ibrs", "amd-stibp",
            "stibp-always-on", "amd-ssbd", "amd-psfd",
            # FEAT_8000_0021_EAX
            "no-nested-data-bp", "lfence-always-serializing",
            "null-sel-clr-base", "auto-ibrs",
            # FEAT_7_0_EBX
            "fsgsbase", "bmi1", "avx2", "smep", "bmi2", "erms", "invpcid",
            "avx512f", "avx512dq", "rdseed", "adx", "smap", "avx512ifma",
            "clflushopt", "clwb", "avx512cd", "sha-ni", "avx512bw",
            "avx512vl",
            # FEAT_7_0_ECX
            "avx512vbmi", "umip", "pku", "avx512vbmi2", "gfni", "vaes",
            "vpclmulqdq", "avx512vnni", "avx512bitalg", "avx512-vpopcntdq",
            "la57", "rdpid",
            # FEAT_7_0_EDX
            "fsrm",
            # FEAT_7_1_EAX
            "avx512-bf16",
            # FEAT_XSAVE
            "xsaveopt", "xsavec", "xgetbv1", "xsaves",
            # FEAT_6_EAX
            "arat",
            # FEAT_SVM
            "npt", "nrip-save", "vnmi", "svme-addr-chk",
        ],
    },
]

REGS = ("eax", "ebx", "ecx", "edx")


def log(msg):
    print(msg, file=sys.stderr)


# ---------------------------------------------------------------------------
# QMP
# ---------------------------------------------------------------------------

class QMP:
    def __init__(self, path, proc, timeout=30.0):
        self.proc = proc
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        deadline = time.time() + timeout
        while True:
            try:
                self.sock.connect(path)
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError("QEMU did not open its QMP socket")
                time.sleep(0.02)
        self.sock.settimeout(timeout)
        self.file = self.sock.makefile("rwb")
        self.file.readline()  # greeting
        self.cmd("qmp_capabilities")

    def cmd(self, name, **args):
        msg = {"execute": name}
        if args:
            msg["arguments"] = args
        self.file.write(json.dumps(msg).encode() + b"\n")
        self.file.flush()
        while True:
            line = self.file.readline()
            if not line:
                raise RuntimeError("QMP connection closed during %s" % name)
            reply = json.loads(line)
            if "return" in reply:
                return reply["return"]
            if "error" in reply:
                raise RuntimeError("%s: %s" % (name, reply["error"]))

    def close(self):
        try:
            self.cmd("quit")
        except Exception:
            pass
        self.sock.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def start_qemu(qemu, tmpdir, tag, extra):
    path = os.path.join(tmpdir, tag + ".sock")
    args = [qemu, "-nodefaults", "-nographic", "-display", "none"] + extra + [
        "-qmp", "unix:%s,server=on,wait=off" % path]
    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        return QMP(path, proc)
    except Exception:
        proc.kill()
        _, err = proc.communicate()
        raise RuntimeError("cannot start %s: %s" % (" ".join(args),
                                                     err.decode().strip()))


# ---------------------------------------------------------------------------
# libvirt
# ---------------------------------------------------------------------------

def single_bit(mask):
    return [i for i in range(32) if mask >> i & 1]


def load_libvirt_features(cpu_map):
    root = ET.parse(os.path.join(cpu_map, "x86_features.xml")).getroot()
    features = []
    for el in root.findall("feature"):
        name = el.get("name")
        bits = []
        for c in el:
            if c.tag == "cpuid":
                leaf = int(c.get("eax_in"), 16)
                sub = int(c.get("ecx_in", "0"), 16)
                for reg in REGS:
                    if c.get(reg) is not None:
                        for b in single_bit(int(c.get(reg), 16)):
                            bits.append({"kind": "cpuid", "leaf": leaf,
                                         "subleaf": sub, "register": reg,
                                         "bit": b})
            elif c.tag == "msr":
                index = int(c.get("index"), 16)
                for reg in ("eax", "edx"):
                    for b in single_bit(int(c.get(reg), 16)):
                        bits.append({"kind": "msr", "msr": index,
                                     "register": reg, "bit": b})
        if not bits:
            raise SystemExit("libvirt feature %s has no bits" % name)
        features.append({
            "name": name,
            "bits": bits,
            "migratable": el.get("migratable") != "no",
            "libvirt_aliases": [a.get("name") for a in el.findall("alias")],
        })
    return features


def add_newer_features(lv_features):
    """Append NEWER_LIBVIRT_FEATURES the installed libvirt lacks; return
    their names."""
    have = {f["name"] for f in lv_features}
    used = {bit_key(b): f["name"] for f in lv_features for b in f["bits"]}
    added = []
    for kind, where, reg, bits in NEWER_LIBVIRT_FEATURES:
        for bit, name in bits.items():
            if name in have:
                continue
            if kind == "cpuid":
                b = {"kind": "cpuid", "leaf": where[0], "subleaf": where[1],
                     "register": reg, "bit": bit}
            else:
                b = {"kind": "msr", "msr": where, "register": reg,
                     "bit": bit}
            if bit_key(b) in used:
                raise SystemExit("newer feature %s: bit %r already used by %s"
                                 % (name, bit_key(b), used[bit_key(b)]))
            used[bit_key(b)] = name
            have.add(name)
            lv_features.append({
                "name": name,
                "bits": [b],
                "migratable": True,
                "libvirt_aliases": list(NEWER_LIBVIRT_ALIASES.get(name, [])),
            })
            added.append(name)
    return added


def load_libvirt_models(cpu_map):
    models = {}
    for fn in sorted(os.listdir(cpu_map)):
        if not (fn.startswith("x86_") and fn.endswith(".xml")):
            continue
        root = ET.parse(os.path.join(cpu_map, fn)).getroot()
        for m in root.findall("model"):
            vendor = m.find("vendor")
            models[m.get("name")] = {
                "vendor": vendor.get("name") if vendor is not None else None,
                "features": {f.get("name") for f in m.findall("feature")},
                "parent": (m.find("model").get("name")
                           if m.find("model") is not None else None),
            }
    return models


def bit_key(b):
    if b["kind"] == "cpuid":
        return ("cpuid", b["leaf"], b["subleaf"], b["register"], b["bit"])
    return ("msr", b["msr"], b["register"], b["bit"])


# ---------------------------------------------------------------------------
# QEMU: property -> bit probing
# ---------------------------------------------------------------------------

MSR_WARN = re.compile(r"MSR\(([0-9A-Fa-f]+)H\)\.(\S+) \[bit (\d+)\]")


def probe_prop(qemu, tmpdir, idx, prop):
    """Return the set of bit keys QEMU sets for `-cpu base,<prop>=on`."""
    path = os.path.join(tmpdir, "p%d.sock" % idx)
    cpu = "base" if prop is None else "base,%s=on" % prop
    args = [qemu, "-machine", "microvm", "-accel", "tcg", "-S",
            "-nodefaults", "-nographic", "-display", "none", "-cpu", cpu,
            "-qmp", "unix:%s,server=on,wait=off" % path]
    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    keys = set()
    try:
        q = QMP(path, proc)
    except Exception:
        proc.kill()
        proc.communicate()
        return None
    try:
        qom = q.cmd("query-cpus-fast")[0]["qom-path"]
        for prop_name in ("feature-words", "filtered-features"):
            for w in q.cmd("qom-get", path=qom, property=prop_name):
                for b in single_bit(w["features"]):
                    keys.add(("cpuid", w["cpuid-input-eax"],
                              w.get("cpuid-input-ecx", 0),
                              w["cpuid-register"].lower(), b))
    finally:
        q.close()
    err = proc.stderr.read().decode(errors="replace")
    proc.stderr.close()
    for m in MSR_WARN.finditer(err):
        bit = int(m.group(3))
        keys.add(("msr", int(m.group(1), 16), "eax" if bit < 32 else "edx",
                  bit % 32))
    return keys


def probe_qemu_bits(qemu, tmpdir, props, jobs):
    base = probe_prop(qemu, tmpdir, 0, None)
    if base is None:
        raise SystemExit("cannot start QEMU with -cpu base for probing")
    result = {}
    with ThreadPoolExecutor(max_workers=jobs) as ex:
        futs = {p: ex.submit(probe_prop, qemu, tmpdir, i + 1, p)
                for i, p in enumerate(props)}
        for p, f in futs.items():
            keys = f.result()
            result[p] = None if keys is None else keys - base
    return result


# ---------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------

def kvm_usable():
    return os.access("/dev/kvm", os.R_OK | os.W_OK)


def variants(s):
    out = {s, s.replace("-", "_"), s.replace("_", "-")}
    if "." in s:
        for ch in ("_", "-", ""):
            out.add(s.replace(".", ch))
    return out


def dump_list(key, items):
    lines = [json.dumps(i, ensure_ascii=False) for i in items]
    return ("{\n  \"%s\": [\n    " % key + ",\n    ".join(lines)
            + "\n  ]\n}\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--qemu", default="qemu-system-x86_64")
    ap.add_argument("--cpu-map", default="/usr/share/libvirt/cpu_map")
    ap.add_argument("--out-dir", default=DEFAULT_OUT_DIR)
    ap.add_argument("--no-kvm", action="store_true",
                    help="do not use KVM to read the vme bit of each model")
    ap.add_argument("--jobs", type=int, default=8)
    opts = ap.parse_args()

    qemu = shutil.which(opts.qemu) or opts.qemu
    tmpdir = tempfile.mkdtemp(prefix="tern-cpu-data-")
    report = {}
    try:
        return generate(opts, qemu, tmpdir, report)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


def generate(opts, qemu, tmpdir, report):
    lv_features = load_libvirt_features(opts.cpu_map)
    installed_count = len(lv_features)
    report["newer_features"] = add_newer_features(lv_features)
    lv_models = load_libvirt_models(opts.cpu_map)
    lv_by_name = {f["name"]: f for f in lv_features}
    lv_by_bit = {}
    multi_bit = []
    for f in lv_features:
        if len(f["bits"]) > 1:
            multi_bit.append(f["name"])
        for b in f["bits"]:
            k = bit_key(b)
            if k in lv_by_bit:
                raise SystemExit("bit %r defined twice in libvirt (%s, %s)"
                                 % (k, lv_by_bit[k], f["name"]))
            lv_by_bit[k] = f["name"]

    # --- QEMU (TCG): definitions and expansions -------------------------
    q = start_qemu(qemu, tmpdir, "tcg",
                   ["-machine", "none", "-accel", "tcg"])
    try:
        ver = q.cmd("query-version")["qemu"]
        qemu_ver = "%d.%d" % (ver["major"], ver["minor"])
        defs = q.cmd("query-cpu-definitions")
        full, static = {}, {}
        for d in defs:
            if d["name"] in QEMU_NON_MODELS or d.get("alias-of"):
                continue
            full[d["name"]] = q.cmd("query-cpu-model-expansion", type="full",
                                    model={"name": d["name"]})["model"]["props"]
            static[d["name"]] = q.cmd("query-cpu-model-expansion",
                                      type="static",
                                      model={"name": d["name"]})["model"]["props"]
        base_full = q.cmd("query-cpu-model-expansion", type="full",
                          model={"name": "base"})["model"]["props"]
        base_static = q.cmd("query-cpu-model-expansion", type="static",
                            model={"name": "base"})["model"]["props"]
    finally:
        q.close()

    # QEMU canonical feature names: boolean props of a static expansion.
    qemu_canonical = sorted(k for k, v in base_static.items()
                            if isinstance(v, bool))
    qemu_bool_props = sorted(k for k, v in base_full.items()
                             if isinstance(v, bool) and k != "realized"
                             and not k.startswith("hv-"))

    # --- vme under KVM -----------------------------------------------------
    vme = {}
    use_kvm = not opts.no_kvm and kvm_usable()
    if use_kvm:
        try:
            qk = start_qemu(qemu, tmpdir, "kvm",
                            ["-machine", "none", "-accel", "kvm"])
        except RuntimeError as e:
            log("warning: KVM unusable (%s); using built-in vme table" % e)
            use_kvm = False
        else:
            try:
                for name in full:
                    vme[name] = qk.cmd("query-cpu-model-expansion",
                                       type="full",
                                       model={"name": name})["model"]["props"]["vme"]
            finally:
                qk.close()
    fallback_vme = {n: re.sub(r"-v\d+$", "", n) not in MODELS_WITHOUT_VME
                    for n in full}
    if use_kvm:
        diff = sorted(n for n in full if vme[n] != fallback_vme[n])
        if diff:
            log("warning: built-in vme table disagrees with KVM for: %s"
                % ", ".join(diff))
    else:
        vme = fallback_vme
    report["vme_source"] = "KVM expansion" if use_kvm else "built-in table"

    # --- QEMU property -> bits, joined with libvirt bits -----------------
    probed = probe_qemu_bits(qemu, tmpdir, qemu_bool_props, opts.jobs)
    qemu_to_lv = {}          # any QEMU prop spelling -> libvirt name
    lv_qemu_props = {}       # libvirt name -> [QEMU props]
    for prop, keys in probed.items():
        if not keys:
            continue
        # Bits libvirt does not define (e.g. the XCR0 component bits in CPUID
        # 0xD.0 that QEMU derives from "xsave") are ignored; the libvirt bits
        # must be exactly those of one libvirt feature.
        known = {k for k in keys if k in lv_by_bit}
        names = {lv_by_bit[k] for k in known}
        if len(names) != 1:
            continue
        lv = names.pop()
        if known != {bit_key(b) for b in lv_by_name[lv]["bits"]}:
            continue
        if known != keys:
            report.setdefault("extra_bits", []).append(
                "%s also sets %s" % (prop, sorted(keys - known)))
        qemu_to_lv[prop] = lv
        lv_qemu_props.setdefault(lv, []).append(prop)
    # MSR features QEMU cannot report a bit for (none expected): by name.
    for f in lv_features:
        if f["name"] not in lv_qemu_props and f["bits"][0]["kind"] == "msr" \
                and f["name"] in base_static:
            qemu_to_lv[f["name"]] = f["name"]
            lv_qemu_props[f["name"]] = [f["name"]]

    unmapped_qemu = sorted(p for p in qemu_canonical if p not in qemu_to_lv)
    report["unmapped_qemu"] = unmapped_qemu
    report["unprobed"] = sorted(p for p, k in probed.items() if k is None)

    # --- features.json -------------------------------------------------------
    out_features = []
    for f in lv_features:
        name = f["name"]
        entry = {"name": name}
        bits = []
        for b in f["bits"]:
            if b["kind"] == "cpuid":
                e = {"cpuid": "0x%08x" % b["leaf"]}
                if b["subleaf"]:
                    e["subleaf"] = b["subleaf"]
            else:
                e = {"msr": "0x%08x" % b["msr"]}
            e["register"] = b["register"]
            e["bit"] = b["bit"]
            bits.append(e)
        if len(bits) == 1:
            entry.update(bits[0])
        else:
            entry["bits"] = bits
        if not f["migratable"]:
            entry["migratable"] = False
        props = lv_qemu_props.get(name, [])
        canon = [p for p in props if p in base_static]
        if len(canon) > 1:
            log("warning: several QEMU names for %s: %s" % (name, canon))
        qname = canon[0] if canon else NEWER_QEMU_NAMES.get(name)
        if qname:
            props = props + [qname]
        linux = LINUX_NAMES.get(name)
        spellings = set(f["libvirt_aliases"]) | set(props)
        if linux:
            spellings.add(linux)
        spellings |= set(COMMON_ALIASES.get(name, []))
        aliases = set()
        for s in spellings | {name}:
            aliases |= variants(s)
        aliases.discard(name)
        entry["_aliases"] = aliases
        if qname and qname != name:
            entry["qemu"] = qname
        if linux and linux != name:
            entry["linux"] = linux
        out_features.append(entry)

    # alias collisions
    canon_names = {e["name"] for e in out_features}
    claims = {}
    for e in out_features:
        for a in e["_aliases"]:
            claims.setdefault(a, []).append(e["name"])
    collisions = []
    for e in out_features:
        keep = []
        for a in sorted(e["_aliases"]):
            if a in canon_names:
                collisions.append("%s (alias of %s) = feature name" % (a, e["name"]))
            elif len(claims[a]) > 1:
                collisions.append("%s claimed by %s" % (a, "/".join(claims[a])))
            else:
                keep.append(a)
        del e["_aliases"]
        if keep:
            # keep a stable key order: name, location, migratable, aliases, qemu, linux
            ordered = {}
            for k in ("name", "cpuid", "msr", "subleaf", "register", "bit",
                      "bits", "migratable"):
                if k in e:
                    ordered[k] = e[k]
            ordered["aliases"] = keep
            for k in ("qemu", "linux"):
                if k in e:
                    ordered[k] = e[k]
            e.clear()
            e.update(ordered)
    report["alias_collisions"] = sorted(set(collisions))
    feature_order = {e["name"]: i for i, e in enumerate(out_features)}

    # --- models.json ---------------------------------------------------------
    aliases_of = {}
    for d in defs:
        if d.get("alias-of"):
            aliases_of.setdefault(d["alias-of"], []).append(d["name"])

    def family_of(vname):
        return re.sub(r"-v\d+$", "", vname)

    excluded = set(MODEL_EXCLUDED_FEATURES)
    if MODEL_EXCLUDE_VMX_MSR_FEATURES:
        excluded |= {f["name"] for f in lv_features
                     if all(b["kind"] == "msr" and b["msr"] in VMX_MSR_RANGE
                            for b in f["bits"])}

    def model_features(props, vname):
        feats = set()
        for p in qemu_canonical:
            if p == "vme":
                continue
            if props.get(p) is True and p in qemu_to_lv:
                feats.add(qemu_to_lv[p])
        if vme[vname]:
            feats.add("vme")
        feats -= excluded
        return sorted(feats, key=feature_order.__getitem__)

    def vendor_for(fam, qemu_vendor):
        for cand in [fam] + aliases_of.get(fam + "-v1", []):
            if cand in lv_models:
                return lv_models[cand]["vendor"]
        return QEMU_VENDORS[qemu_vendor]

    order = GENERIC_ORDER + INTEL_ORDER + AMD_ORDER + HYGON_ORDER
    fams = {}
    for vname in full:
        fams.setdefault(family_of(vname), []).append(vname)
    unknown = sorted(f for f in fams if f not in order)
    for f in unknown:
        log("warning: QEMU model family %s not in the ordering tables;"
            " appended" % f)

    def vkey(v):
        m = re.search(r"-v(\d+)$", v)
        return int(m.group(1)) if m else 0

    records = []
    mismatches = []
    for fam in [f for f in order if f in fams] + unknown:
        for vname in sorted(fams[fam], key=vkey):
            props = full[vname]
            sprops = static[vname]
            for p in qemu_canonical:
                if p in sprops and sprops[p] != props.get(p):
                    mismatches.append("%s.%s" % (vname, p))
            qaliases = sorted(aliases_of.get(vname, []),
                              key=lambda a: (a not in lv_models, a))
            if qaliases:
                name, aliases = qaliases[0], [vname] + qaliases[1:]
            else:
                name, aliases = vname, []
            src = "QEMU %s %s" % (qemu_ver, vname)
            records.append({
                "name": name,
                "aliases": aliases,
                "vendor": vendor_for(fam, props["vendor"]),
                "family": props["family"],
                "model": props["model"],
                "stepping": props["stepping"],
                "source": src,
                "features": model_features(props, vname),
                "_qname": vname,
            })
    if mismatches:
        raise SystemExit("full/static expansion disagree: %s" % mismatches)

    # --- hand-transcribed models (HAND_MODELS) ---------------------------
    # QEMU property name -> libvirt name, for properties the installed QEMU
    # may not have (features added by NEWER_LIBVIRT_FEATURES).
    newer_qemu_to_lv = {q: n for n, q in NEWER_QEMU_NAMES.items()}

    def lv_name(prop, model):
        for cand in (prop, prop.replace("_", "-")):
            if cand in qemu_to_lv:
                return qemu_to_lv[cand]
            if cand in newer_qemu_to_lv:
                return newer_qemu_to_lv[cand]
            if cand in lv_by_name:
                return cand
        raise SystemExit("%s: QEMU property %s has no feature name"
                         % (model, prop))

    by_name = {r["name"]: r for r in records}
    hand_added = []
    for hm in HAND_MODELS:
        if hm["name"] in by_name or hm["qemu_name"] in full:
            continue
        if family_of(hm["qemu_name"]) not in order:
            raise SystemExit("%s: family not in the ordering tables"
                             % hm["name"])
        if "base" in hm:
            base = by_name[hm["base"]]
            rec = {k: base[k] for k in ("vendor", "family", "model",
                                        "stepping")}
            feats = set(base["features"])
        else:
            rec = {k: hm[k] for k in ("vendor", "family", "model",
                                      "stepping")}
            feats = {lv_name(p, hm["name"]) for p in hm["qemu_features"]}
        feats |= {lv_name(p, hm["name"]) for p in hm.get("on", [])}
        feats -= {lv_name(p, hm["name"]) for p in hm.get("off", [])}
        feats -= excluded
        for k in ("family", "model", "stepping"):
            if k in hm and "base" in hm:
                rec[k] = hm[k]
        if "superset_of" in hm:
            missing = set(by_name[hm["superset_of"]]["features"]) - feats
            if missing:
                raise SystemExit("%s lacks %s features: %s"
                                 % (hm["name"], hm["superset_of"],
                                    sorted(missing)))
        r = {"name": hm["name"], "aliases": list(hm["aliases"])}
        r.update(rec)
        r["source"] = hm["source"]
        r["features"] = sorted(feats, key=feature_order.__getitem__)
        r["_qname"] = hm["qemu_name"]
        records.append(r)
        by_name[r["name"]] = r
        hand_added.append(r["name"])
    report["hand_models"] = hand_added

    # order: model family (ordering tables, unknown families last), version
    fam_rank = {f: i for i, f in enumerate(order + unknown)}
    records.sort(key=lambda r: (fam_rank[family_of(r["_qname"])],
                                vkey(r["_qname"])))
    for r in records:
        del r["_qname"]

    # --- informational: differences from libvirt's own model definitions ---
    lv_diffs = []
    for r in records:
        if r["name"] in lv_models:
            lm = lv_models[r["name"]]
            if lm["parent"]:
                continue
            have = set(r["features"])
            want = lm["features"]
            if have != want:
                lv_diffs.append("%s: +%s -%s" % (
                    r["name"], ",".join(sorted(have - want)) or "none",
                    ",".join(sorted(want - have)) or "none"))
    report["libvirt_diffs"] = lv_diffs
    report["libvirt_only_models"] = sorted(
        m for m in lv_models
        if not any(m == r["name"] or m in r["aliases"] for r in records))

    # --- write + validate ---------------------------------------------------
    os.makedirs(opts.out_dir, exist_ok=True)
    fpath = os.path.join(opts.out_dir, "features.json")
    mpath = os.path.join(opts.out_dir, "models.json")
    ftext = dump_list("features", out_features)
    mtext = dump_list("models", records)
    validate(ftext, mtext)
    for path, text in ((fpath, ftext), (mpath, mtext)):
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)

    log("wrote %s (%d features)" % (fpath, len(out_features)))
    log("wrote %s (%d models)" % (mpath, len(records)))
    log("vme source: %s" % report["vme_source"])
    log("multi-bit libvirt features: %s" % (", ".join(multi_bit) or "none"))
    log("alias collisions dropped: %s"
        % ("; ".join(report["alias_collisions"]) or "none"))
    log("QEMU features without a libvirt name (%d): %s"
        % (len(unmapped_qemu), " ".join(unmapped_qemu)))
    if report["unprobed"]:
        log("QEMU properties that could not be probed: %s"
            % " ".join(report["unprobed"]))
    for x in report.get("extra_bits", []):
        log("note: QEMU property %s" % x)
    log("features appended from %s (%d, after the installed %d): %s"
        % (NEWER_LIBVIRT_SOURCE, len(report["newer_features"]),
           installed_count, " ".join(report["newer_features"]) or "none"))
    confirmed = [n for n in report["newer_features"] if n in lv_qemu_props]
    log("of those, bit positions confirmed by probing QEMU %s (%d): %s"
        % (qemu_ver, len(confirmed), " ".join(confirmed) or "none"))
    log("hand-transcribed models added: %s"
        % (" ".join(report["hand_models"]) or "none"))
    if MODEL_EXCLUDE_VMX_MSR_FEATURES:
        log("VMX capability MSR features left out of model feature lists")
    log("libvirt cpu_map models not offered by QEMU %s: %s"
        % (qemu_ver, " ".join(report["libvirt_only_models"]) or "none"))
    log("differences from libvirt's model definitions (QEMU vs libvirt):")
    for d in lv_diffs:
        log("  " + d)
    return 0


def validate(ftext, mtext):
    errors = []
    fdata = json.loads(ftext)
    mdata = json.loads(mtext)
    names = [f["name"] for f in fdata["features"]]
    if len(set(names)) != len(names):
        errors.append("duplicate feature names")
    seen = {}
    for f in fdata["features"]:
        locs = f.get("bits", [f])
        for b in locs:
            if not 0 <= b["bit"] <= 31:
                errors.append("%s: bit out of range" % f["name"])
            if b["register"] not in REGS:
                errors.append("%s: bad register" % f["name"])
            if ("msr" in b) == ("cpuid" in b):
                errors.append("%s: needs exactly one of cpuid/msr" % f["name"])
            if "msr" in b and b["register"] not in ("eax", "edx"):
                errors.append("%s: MSR register must be eax/edx" % f["name"])
            for key in ("cpuid", "msr"):
                if key in b and not re.fullmatch(r"0x[0-9a-f]{8}", b[key]):
                    errors.append("%s: bad %s" % (f["name"], key))
        for a in f.get("aliases", []) + [f["name"]]:
            if a in seen and seen[a] != f["name"]:
                errors.append("spelling %s used by %s and %s"
                              % (a, seen[a], f["name"]))
            seen[a] = f["name"]
    order = {n: i for i, n in enumerate(names)}
    mnames = set()
    for m in mdata["models"]:
        for n in [m["name"]] + m["aliases"]:
            if n in mnames:
                errors.append("duplicate model name/alias %s" % n)
            mnames.add(n)
        for k in ("family", "model", "stepping"):
            if not isinstance(m[k], int):
                errors.append("%s: %s not an integer" % (m["name"], k))
        if m["vendor"] not in ("Intel", "AMD", "Hygon", None):
            errors.append("%s: bad vendor %r" % (m["name"], m["vendor"]))
        for feat in m["features"]:
            if feat not in order:
                errors.append("%s: unknown feature %s" % (m["name"], feat))
        idx = [order.get(x, -1) for x in m["features"]]
        if idx != sorted(set(idx)):
            errors.append("%s: features not in features.json order"
                          % m["name"])
    if errors:
        raise SystemExit("validation failed:\n  " + "\n  ".join(errors))


if __name__ == "__main__":
    sys.exit(main())
