#!/bin/sh
# Baseline of many hosts: Tern against libvirt (virsh cpu-baseline, test driver) on the same file.
# Usage: Benchmarks/baseline.sh [HOSTS]   (default 10000)
# Prints wall times of both, Tern's own phase split (parse vs. baseline), and the ratio.
set -eu
cd "$(dirname "$0")/.."
hosts=${1:-10000}
scripts/install-deps.sh >/dev/null
tern=$(scripts/build-release.sh)/tern
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Real models of one vendor from libvirt's cpu_map, each host with a few features added.
python3 - "$hosts" "$work/hosts.xml" <<'PY'
import random, sys, xml.etree.ElementTree as ET
n, out = int(sys.argv[1]), sys.argv[2]
random.seed(11)
models = ["SandyBridge", "IvyBridge", "Haswell", "Broadwell", "Skylake-Server", "Cascadelake-Server", "Icelake-Server"]
extra = ["vmx", "ss", "ht", "tm", "pbe", "dtes64", "monitor", "ds_cpl", "est", "tm2", "xtpr", "pdcm", "osxsave", "invtsc", "pdpe1gb"]
with open(out, "w") as f:
    for i in range(n):
        f.write("<cpu>\n  <arch>x86_64</arch>\n  <model>%s</model>\n  <vendor>Intel</vendor>\n" % random.choice(models))
        for name in random.sample(extra, random.randint(3, 10)):
            f.write("  <feature name='%s'/>\n" % name)
        f.write("</cpu>\n")
PY
echo "hosts: $hosts ($(wc -c < "$work/hosts.xml") bytes of <cpu> descriptions)"

now() { date +%s%N; }
t0=$(now); $tern cpu-baseline "$work/hosts.xml" --cpu-map /usr/share/libvirt/cpu_map --timing > "$work/tern-libvirt-map.xml" 2> "$work/timing1"; t1=$(now)
$tern cpu-baseline "$work/hosts.xml" --timing > "$work/tern.xml" 2> "$work/timing2"; t2=$(now)
virsh -q -c test:///default cpu-baseline "$work/hosts.xml" > "$work/virsh.xml"; t3=$(now)

tern_ms=$(( (t1 - t0) / 1000000 )); tern_own_ms=$(( (t2 - t1) / 1000000 )); virsh_ms=$(( (t3 - t2) / 1000000 ))
echo "tern cpu-baseline (libvirt cpu_map):  ${tern_ms} ms wall   [$(cat "$work/timing1")]"
echo "tern cpu-baseline (Tern's own map):   ${tern_own_ms} ms wall   [$(cat "$work/timing2")]"
echo "virsh cpu-baseline (libvirt 9.0):     ${virsh_ms} ms wall"
if diff -q -B "$work/tern-libvirt-map.xml" "$work/virsh.xml" >/dev/null; then echo "same answer as virsh: yes"; else echo "same answer as virsh: NO"; fi
awk -v t="$tern_ms" -v v="$virsh_ms" 'BEGIN { if (t > 0) printf "ratio virsh/tern: %.1fx\n", v / t }'
