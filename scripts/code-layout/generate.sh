#!/bin/bash
# Regenerates scripts/code-layout/ternd.order: the functions ternd runs in a typical life, which
# the release link (Package.swift, releaseLink) places first and together in the program's code.
#
# Why: the kernel maps a program's code 64 KiB at a time around each page it touches
# ("fault-around"). With the functions a daemon uses scattered over 23 MB of code (Swift runtime,
# Foundation, NIO, Hummingbird, GRDB, Tern), nearly every 64 KiB block is touched somewhere and
# most of the code becomes resident. Placed together, the functions in use fill a few MB.
#
# How: scripts/build-release.sh builds ternd; trace-text-pages.so (an LD_PRELOAD library)
# records every code page two ternd processes touch while they start, define, start, inspect,
# suspend, resume, save, restore, migrate, shut down and undefine real VMs (the test guest); the
# functions on those pages, named by llvm-nm, become the order file. The order is a layout hint
# only: a function missing from it (renamed, new) is simply placed after the listed ones.
#
# Usage: scripts/code-layout/generate.sh     (needs QEMU and the test guest, like the tests)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
die() { echo "code-layout: $*" >&2; exit 1; }

bin=$("$repo/scripts/build-release.sh")
ternd=$bin/ternd tern=$bin/tern
mapfile -t guest < <("$repo/scripts/build-guest.sh" | tail -n 2)
kernel=${guest[0]} initrd=${guest[1]}

work=$(mktemp -d /tmp/tern-code-layout.XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    sleep 1
    pkill -KILL -f "qemu-system.*$work" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
cc -O2 -Wall -shared -fPIC -o "$work/trace-text-pages.so" "$here/trace-text-pages.c"

start_ternd() { # NAME
    mkdir -p "$work/$1"
    LD_PRELOAD=$work/trace-text-pages.so TRACE_TEXT_PAGES_OUT=$work/$1.pages SWIFT_BACKTRACE=enable=no \
        "$ternd" --state-dir "$work/$1" > "$work/$1.log" 2>&1 &
    pids+=($!)
    for _ in $(seq 300); do "$tern" list --connect "$work/$1/ternd.sock" > /dev/null 2>&1 && return; sleep 0.1; done
    cat "$work/$1.log" >&2; die "ternd $1 did not answer"
}
start_ternd a
start_ternd b
A=$work/a/ternd.sock B=$work/b/ternd.sock

domain() { # NAME MODE
    cat <<XML
<domain type='qemu'><name>$1</name><memory unit='MiB'>256</memory><vcpu>1</vcpu>
<os><type arch='x86_64' machine='q35'>hvm</type><kernel>$kernel</kernel><initrd>$initrd</initrd>
<cmdline>console=ttyS0 quiet cryptomgr.notests tern.mode=$2</cmdline></os>
<cpu mode='custom' match='exact'><model fallback='forbid'>qemu64</model><feature policy='disable' name='vme'/><feature policy='disable' name='svm'/></cpu>
</domain>
XML
}
t() { echo "+ tern $*" >&2; "$tern" "$@" > /dev/null; }
wait_state() { # NAME STATE SOCKET
    for _ in $(seq 600); do
        "$tern" dominfo "$1" --connect "$3" 2>/dev/null | grep -qi "state: *$2" && return
        sleep 0.1
    done
    die "$1 did not reach '$2'"
}
domain counter counter > "$work/counter.xml"
domain flags flags > "$work/flags.xml"
t define "$work/counter.xml" --connect "$A"
t define "$work/flags.xml" --connect "$A"
for _ in 1 2 3; do   # the guest prints its CPU flags and powers off by itself
    t start flags --connect "$A"; wait_state flags shutoff "$A"
done
t start counter --connect "$A"
sleep 2
for _ in 1 2 3; do t list --connect "$A"; t dominfo counter --connect "$A"; done
t suspend counter --connect "$A"; t resume counter --connect "$A"
t migrate counter --connect "$A" --to "$B" --verbose
sleep 1
t migrate counter --connect "$B" --to "$A"
t save counter "$work/counter.ternsave" --connect "$A"
t restore "$work/counter.ternsave" --connect "$B"
sleep 1
t destroy counter --connect "$B"
t start counter --connect "$A"; sleep 2
t shutdown counter --connect "$A"; sleep 1   # the busybox guest ignores the power button
t destroy counter --connect "$A"
t undefine flags --connect "$A"
sleep 5   # the daemons' idle work (timers, QEMU events) with nothing asked
for p in "${pids[@]}"; do kill -TERM "$p"; done
for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
pids=()

# Pages (link-time addresses, 8 bytes each) -> the functions on them, in address order.
cat "$work"/a.pages "$work"/b.pages > "$work/all.pages"
python3 - "$work/all.pages" "$ternd" "$here/ternd.order" <<'PY'
import struct, subprocess, sys
pages_file, binary, out = sys.argv[1:4]
data = open(pages_file, "rb").read()
pages = sorted({struct.unpack_from("<Q", data, i)[0] for i in range(0, len(data) - 7, 8)})
nm = subprocess.run(["llvm-nm", "--defined-only", "--numeric-sort", "--print-size", "--no-demangle", binary],
                    check=True, capture_output=True, text=True).stdout
page_set = set(pages)
names, seen = [], set()
for line in nm.splitlines():
    parts = line.split()
    if len(parts) != 4 or parts[2] not in "tTwW":
        continue
    start, size, name = int(parts[0], 16), int(parts[1], 16), parts[3]
    first, last = start >> 12, (start + max(size, 1) - 1) >> 12
    if any((p << 12) in page_set for p in range(first, last + 1)) and name not in seen:
        seen.add(name); names.append(name)
open(out, "w").write("\n".join(names) + "\n")
print(f"code-layout: {len(pages)} code pages touched ({len(pages) * 4} KiB); {len(names)} functions -> {out}",
      file=sys.stderr)
PY

# SwiftPM does not relink when only the order file changed.
rm -f "$repo/.build-release/x86_64-unknown-linux-gnu/release/tern" "$repo/.build-release/x86_64-unknown-linux-gnu/release/ternd"
"$repo/scripts/build-release.sh" > /dev/null
