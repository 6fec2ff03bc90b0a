#!/bin/sh
# The main job: install what Tern needs, build it, start a host daemon, boot two real Linux
# guests with the CPU Tern chooses (classic compatibility mode, and a named CPU model) and show
# from inside each guest the CPU flags it got; then show where a VM on one recorded real
# processor could move among four others; then move VMs between two daemons.
set -eu
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/build-guest.sh >/dev/null
swift build --product tern 2>&1 | tail -n 1
swift build --product ternd 2>&1 | tail -n 1
tern=$PWD/.build/debug/tern
ternd=$PWD/.build/debug/ternd
dumps=Tests/TernCPUTests/Fixtures/cpuid-dumps
guest=$PWD/.build-guest

state=$(mktemp -d /tmp/tern-demo.XXXXXX)
cleanup() {
    for d in "$state" "$state/older"; do
        for vm in compat haswell mover pinned; do
            "$tern" destroy "$vm" --connect "$d/ternd.sock" >/dev/null 2>&1 || true
        done
    done
    [ -n "${daemon:-}" ] && kill "$daemon" 2>/dev/null || true
    [ -n "${older:-}" ] && kill "$older" 2>/dev/null || true
    rm -rf "$state"
}
trap cleanup EXIT INT TERM

echo
echo "== This host (tern capabilities, first lines) =="
$tern capabilities | sed -n '1,10p'

echo
echo "== Starting ternd (state in $state) =="
# wait_daemon DIR: until the ternd with state in DIR answers (20 s at most)
wait_daemon() {
    i=0
    until $tern list --connect "$1/ternd.sock" >/dev/null 2>&1; do
        i=$((i + 1)); [ $i -lt 200 ] || { cat "$1/ternd.log"; exit 1; }; sleep 0.1
    done
}
# wait_console DIR VM TEXT: until the VM's console log shows TEXT (60 s at most)
wait_console() {
    i=0
    until grep -q "$3" "$1/vms/$2/console.log" 2>/dev/null; do
        i=$((i + 1)); [ $i -lt 600 ] || { echo "guest $2 did not print '$3'"; exit 1; }; sleep 0.1
    done
}
"$ternd" --state-dir "$state" > "$state/ternd.log" 2>&1 &
daemon=$!
export TERN_CONNECT="$state/ternd.sock"
wait_daemon "$state"

domain() { # name, cpu element
    cat <<XML
<domain type='qemu'>
  <name>$1</name>
  <memory unit='MiB'>256</memory>
  <vcpu>2</vcpu>
  <os>
    <type arch='x86_64' machine='q35'>hvm</type>
    <kernel>$guest/vmlinuz</kernel>
    <initrd>$guest/initramfs.cpio.gz</initrd>
    <cmdline>console=ttyS0 quiet cryptomgr.notests tern.mode=flags</cmdline>
  </os>
  $2
</domain>
XML
}
domain compat "<metadata><tern:cpu xmlns:tern='https://tern.dev/xmlns/domain/1' mode='compatibility'/></metadata>" > "$state/compat.xml"
# Haswell without AVX2; QEMU's TCG cannot give a guest VME, PCID, x2APIC, TSC deadline or INVPCID, so
# Tern refuses plain Haswell-noTSX here (it names them) and the definition takes them away.
domain haswell "<cpu mode='custom' match='exact'><model>Haswell-noTSX</model>
    <feature policy='disable' name='avx2'/><feature policy='disable' name='vme'/><feature policy='disable' name='pcid'/>
    <feature policy='disable' name='x2apic'/><feature policy='disable' name='tsc-deadline'/><feature policy='disable' name='invpcid'/></cpu>" > "$state/haswell.xml"
$tern define "$state/compat.xml"
$tern define "$state/haswell.xml"
$tern start compat
$tern start haswell
$tern list

for vm in compat haswell; do
    wait_console "$state" "$vm" "TERN-GUEST: done"
    echo
    echo "== VM '$vm': what Tern promised (tern dominfo) =="
    $tern dominfo "$vm" | grep -E '^(State|CPU mode|CPU model|CPU vendor|Not honoured)' || true
    $tern dominfo "$vm" | sed -n 's/^CPU features: *\([0-9]*\):.*/promised features: \1/p'
    echo "== VM '$vm': what the guest sees (its /proc/cpuinfo, from its console) =="
    grep -E "TERN-GUEST: (cpus|vendor|model|flags)=" "$state/vms/$vm/console.log" | tr -d '\r' | sed 's/^.*TERN-GUEST: /  /'
done
echo
if grep -q "TERN-GUEST: vendor=AuthenticAMD" "$state/vms/compat/console.log"; then
    echo "In compatibility mode the guest has no ssse3, sse4_1, sse4a, popcnt or abm (the classic AMD"
    echo "mask; sse4_2 goes with them, as code built for it uses SSSE3 instructions), and the Haswell"
    echo "guest has avx, fma and bmi2 but no avx2."
else
    echo "In compatibility mode the guest has no ssse3, sse4_1, sse4_2, popcnt, xsave or avx (the classic"
    echo "Intel mask), and the Haswell guest has avx, fma and bmi2 but no avx2."
fi

echo
echo "== A VM started on a Xeon Gold 6148 (Skylake-SP): where can it move? =="
src=$dumps/Xeon-Gold-6148.xml
others="$dumps/Xeon-Platinum-8268.xml $dumps/Ice-Lake-Server.xml $dumps/Core-i7-2600.xml $dumps/EPYC-7502-32-Core.xml"
echo "-- without compatibility mode:"
# shellcheck disable=SC2086
$tern migrate-check --host "$src" $others
echo "-- in pool mode over the four Intel hosts:"
# shellcheck disable=SC2086
$tern migrate-check --host "$src" --pool "$dumps/Xeon-Gold-6148.xml" --pool "$dumps/Xeon-Platinum-8268.xml" \
    --pool "$dumps/Ice-Lake-Server.xml" --pool "$dumps/Core-i7-2600.xml" $others

echo
echo "== Moving running VMs between two hosts with different CPUs =="
# Two host CPUs, as a mixed-generation cluster would have (TCG can offer everything named here).
host_cpu() { # features...
    echo "<cpu mode='custom' match='exact'><model>kvm64</model><vendor>Intel</vendor><feature policy='disable' name='vme'/>"
    for f in "$@"; do echo "<feature policy='require' name='$f'/>"; done
    echo "</cpu>"
}
host_cpu ssse3 popcnt sse4.1 sse4.2 aes > "$state/newer.xml"
host_cpu ssse3 popcnt > "$state/older.xml"
mkdir -p "$state/older"
"$ternd" --state-dir "$state/older" --host-cpu "$state/older.xml" > "$state/older/ternd.log" 2>&1 &
older=$!
wait_daemon "$state/older"
# This demo's first daemon stands in for the newer host from here on: restart it with that CPU.
for vm in compat haswell; do $tern destroy "$vm" >/dev/null 2>&1 || true; done
kill "$daemon"; wait "$daemon" 2>/dev/null || true
"$ternd" --state-dir "$state" --host-cpu "$state/newer.xml" > "$state/ternd.log" 2>&1 &
daemon=$!
wait_daemon "$state"
counting() { # name, cpu element
    domain "$1" "$2" | sed 's/tern.mode=flags/tern.mode=counter/; s/<vcpu>2</<vcpu>1</'
}
counting mover "<metadata><tern:cpu xmlns:tern='https://tern.dev/xmlns/domain/1' mode='pool'>$(cat "$state/newer.xml" "$state/older.xml")</tern:cpu></metadata>" \
    > "$state/mover.xml"
counting pinned "" > "$state/pinned.xml"
$tern define "$state/mover.xml" >/dev/null
$tern define "$state/pinned.xml" >/dev/null
$tern start mover
$tern start pinned
for vm in mover pinned; do wait_console "$state" "$vm" "TERN-GUEST: counter 3"; done
echo "-- 'mover' runs in pool mode over both hosts; live-migrating it to the older host:"
$tern migrate mover --to "$state/older/ternd.sock" --verbose
echo "   its counter, last lines on the newer host, then first lines on the older one:"
grep -a "TERN-GUEST: counter" "$state/vms/mover/console.log" | tail -n 2 | tr -d '\r' | sed 's/^.*TERN-GUEST: /     /'
sleep 0.5
grep -a "TERN-GUEST: counter" "$state/older/vms/mover/console.log" | head -n 2 | tr -d '\r' | sed 's/^.*TERN-GUEST: /     /'
echo "-- 'pinned' has the newer host's whole CPU (host passthrough); the older host must refuse it:"
$tern migrate pinned --to "$state/older/ternd.sock" || true
$tern list
echo "-- save 'mover' on the older host, restore it on the newer one:"
$tern save mover "$state/mover.ternsave" --connect "$state/older/ternd.sock"
$tern restore "$state/mover.ternsave"
sleep 0.5
grep -a "TERN-GUEST: counter" "$state/vms/mover/console.log" | tail -n 1 | tr -d '\r' | sed 's/^.*TERN-GUEST: /     still counting: /'
