#!/usr/bin/env bash
# Live migration and save/restore, Tern against plain QEMU (and libvirt where it can run), in
# one run on the same guest: 1 GiB, idle (a counter) and while it dirties memory (memtouch).
#
#   tern   two ternd on this machine; 'tern migrate VM --to B' (Tern's defaults), alternating
#          directions; figures from its report (total = the command's wall time). B is named by
#          its Unix socket, so Tern streams through a Unix socket (its choice between daemons on
#          one machine). The VM has Tern's default devices, so a virtio balloon with free page
#          reporting: the memory the guest has freed travels as zero pages (plain QEMU has no
#          balloon unless asked; libvirt's default balloon leaves reporting off), on Tern's lean
#          q35 (no SMM, SATA, SMBus, VMware port or vAPIC: less state to load while the guest is
#          stopped; plain QEMU and libvirt get QEMU's default q35)
#   qemu   the same QEMU command line run by hand; a destination QEMU with -incoming, then QMP
#          'migrate' on the source with only the bandwidth cap lifted (QEMU's default is 32 MiB/s),
#          over TCP (tcp:127.0.0.1:PORT); total = from launching the destination to its 'running'
#   tern-tcp, qemu-unix   like against like on the transport: Tern with both daemons named by
#          TCP endpoints (the stream goes over TCP, as between two machines), and plain QEMU over
#          a Unix socket. What a figure owes to the transport and what to the rest shows there
# Downtime, for Tern and QEMU: from the source QEMU's STOP event to the destination QEMU's RESUME event
# (QMP event timestamps; one machine, one clock) — what the guest lives through, not QEMU's own
# 'downtime' figure, which ends when the source has sent the last byte.
# Where the machine's own memory is backed lazily (a VM whose host reclaims its free memory, as
# here), a destination's first writes to fresh memory sometimes cost several times more, for
# every method alike; each move is preceded by a warm-up (WARM, below) so that no method meets
# that by chance.
# Tern and plain QEMU take turns, move by move, who goes first rotating (the host's drift, and
# what one method's move leaves behind for the next, weigh on all alike); between its moves a
# guest is paused ('tern suspend', QMP 'stop'), and it runs SETTLE seconds (0.5) plus a random
# part of up to JITTER seconds (2.5) before each move.
#   virsh  'virsh migrate --live --p2p' between two session-mode libvirtd with their own host
#          UUIDs (libvirt refuses a destination with its own UUID); total = the command's wall
#          time; downtime = libvirt's 'Total downtime'. When libvirt cannot run, the reason is printed
#
# Then save and restore of the idle 1 GiB guest: 'tern save/restore' against QEMU's own
# migrate to a file (stop, 'migrate exec:cat > FILE') and '-incoming exec:cat FILE', in turns.
#
# Usage: [RUNS=3] [MEMORY=1024] [DIRTY_MB=256] [TERN_BIN=.build-release/release] [TERN_ARGS="--connections 1"] [KEEP=1]
#        [SETTLE=0.5] [JITTER=2.5] [WARM=MiB] [CASES="idle dirty"] [METHODS="tern qemu tern-tcp qemu-unix virsh save"]
#        [TERN_DEVICES="<memballoon model='none'/>"] Benchmarks/migration.sh
# (CASES and METHODS narrow a run down for experiments; the figures to report come from a full run.
# TERN_DEVICES goes into the <devices> of Tern's VMs: Tern's default devices are left out there.)
# Needs root (QEMU, libvirt). TCG only.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1

RUNS=${RUNS:-3}
CASES=${CASES:-idle dirty}
METHODS=${METHODS:-tern qemu tern-tcp qemu-unix virsh save}
wants() { [[ " $METHODS " == *" $1 "* ]]; }
MEMORY=${MEMORY:-1024}
DIRTY_MB=${DIRTY_MB:-256}
BOOT_TIMEOUT=${BOOT_TIMEOUT:-180}
SETTLE=${SETTLE:-0.5}   # seconds a guest runs after being resumed, before its move
# plus a random part, up to JITTER seconds, so that moves do not fall in step with the host's
# periodic work (on the development machines, free page reporting every ~2.5 s: a move right
# after a reporting pass writes into memory that must first come back from the machine's own
# host, and with a fixed rhythm the same method in the rotation would keep meeting it)
JITTER=${JITTER:-2.5}
# WARM (MiB, default guest memory + 256; 0 = off): right before every move of every method, and
# outside its timing, the machine's free memory is made resident again: a process writes WARM MiB
# of fresh memory and exits. Where the machine's own host takes back memory its guest has freed
# (free page reporting, on the development machines: 2 s after the free), a destination QEMU's
# first writes to that memory cost 10-20 times more (400 MiB: 40-70 ms written into memory freed
# a moment ago, 800-1100 ms into memory freed long ago). Which move met which was chance, and it
# outweighed what the methods themselves do; with the warm-up, every method's destination starts
# from memory freed a moment ago.
WARM=${WARM:-$((MEMORY + 256))}
warm() {
    ((WARM > 0)) || return 0
    python3 -c '
import mmap, sys
size = int(sys.argv[1]) << 20
# Private and in huge pages, as QEMU asks for its guest memory (the same warm-up in shared
# memory, measured here, left the moves after it as slow as with none)
memory = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
memory.madvise(mmap.MADV_HUGEPAGE)
for offset in range(0, size, 4096):
    memory[offset] = 1
' "$WARM" || die "warming the machine's memory failed"
}
settle() {
    nap "$(awk -v s="$SETTLE" -v j="$JITTER" -v r="$RANDOM" 'BEGIN { printf "%.3f", s + j * r / 32768 }')"
    warm
}
QEMU=${TERN_QEMU:-/usr/bin/qemu-system-x86_64}

die() { echo "migration-bench: error: $*" >&2; exit 1; }
log() { echo "migration-bench: $*" >&2; }
[[ $RUNS =~ ^[1-9][0-9]*$ ]] || die "RUNS must be a positive number"
now_us() { local t=$EPOCHREALTIME; echo "${t//[!0-9]/}"; }
nap() { read -r -t "$1" -u 9 _ 2>/dev/null; return 0; }

work=""
PIDS=()
cleanup() {
    trap - EXIT INT TERM
    local p
    for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null; done
    if [[ -n $work && -d $work ]]; then
        # QEMUs daemonized by ternd, by their files
        pkill -KILL -f "qemu-system.*$work" 2>/dev/null
        # session libvirtd (and the virtlogd each one starts), by their directories
        pkill -KILL -f "libvirtd --config $work" 2>/dev/null
        for p in "$work"/lv-?/run/libvirt/virtlogd.pid; do
            [[ -f $p ]] && grep -qa virtlogd "/proc/$(cat "$p")/cmdline" 2>/dev/null && kill -KILL "$(cat "$p")"
        done
        if [[ -n ${KEEP:-} ]]; then log "kept $work (daemon logs, consoles)"; else rm -rf "$work"; fi
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

scripts/install-deps.sh >/dev/null || die "scripts/install-deps.sh failed"
if [[ -z ${TERN_BIN:-} ]]; then
    log "building release binaries"
    TERN_BIN=$(scripts/build-release.sh) || die "scripts/build-release.sh failed"
fi
TERN_BIN=$(cd "$TERN_BIN" && pwd) || die "TERN_BIN missing"
TERN=$TERN_BIN/tern
TERND=$TERN_BIN/ternd
mapfile -t guest < <(scripts/build-guest.sh 2>/dev/null)
[[ ${#guest[@]} -eq 2 ]] || die "scripts/build-guest.sh failed"
KERNEL=${guest[0]}
INITRD=${guest[1]}

work=$(mktemp -d /tmp/tern-migbench.XXXXXX) || die "mktemp"
mkfifo "$work/nap" && exec 9<>"$work/nap"

# ---- QMP by hand (socat on a pair of FIFOs) ----------------------------------------------
# qmp_open NAME SOCKET: connects, negotiates; later 'qmp NAME JSON' sets REPLY
declare -A QMP_W QMP_R
qmp_open() {
    local name=$1 sock=$2 i
    for ((i = 0; i < 2000; i++)); do [[ -S $sock ]] && break; nap 0.005; done
    mkfifo "$work/$name.in" "$work/$name.out"
    socat -t 0 "UNIX-CONNECT:$sock" - <"$work/$name.in" >"$work/$name.out" 2>/dev/null &
    PIDS+=($!)
    local w r
    exec {w}<>"$work/$name.in" {r}<>"$work/$name.out"
    QMP_W[$name]=$w
    QMP_R[$name]=$r
    read -r -t 10 -u "$r" _ || die "no QMP greeting from $sock"
    qmp "$name" '{"execute":"qmp_capabilities"}'
}
declare -A STOPPED RESUMED   # per connection: the last STOP / RESUME event's time (µs)
qmp() {
    local line
    printf '%s\n' "$2" >&"${QMP_W[$1]}"
    while read -r -t 30 -u "${QMP_R[$1]}" line; do
        [[ $line == *'"return"'* || $line == *'"error"'* ]] && { REPLY=$line; return 0; }
        if [[ $line =~ \"seconds\":\ ([0-9]+),\ \"microseconds\":\ ([0-9]+).*\"event\":\ \"(STOP|RESUME)\" ]]; then
            local t=$((BASH_REMATCH[1] * 1000000 + 10#${BASH_REMATCH[2]}))
            [[ ${BASH_REMATCH[3]} == STOP ]] && STOPPED[$1]=$t || RESUMED[$1]=$t
        fi
    done
    die "QMP $1: no reply to $2"
}
qmp_close() { exec {QMP_W[$1]}>&- {QMP_R[$1]}<&-; rm -f "$work/$1.in" "$work/$1.out"; }
qmp_wait_migrated() { # NAME WHAT: polls query-migrate until completed; dies on failure
    while :; do
        qmp "$1" '{"execute":"query-migrate"}'
        [[ $(field status) == completed ]] && return 0
        [[ $(field status) == failed ]] && die "QEMU $2 failed: $REPLY"
        nap 0.002
    done
}
field() { [[ $REPLY =~ \"$1\":\ \"?([^,\"}]*) ]] && echo "${BASH_REMATCH[1]}"; }

wait_console() { # FILE TEXT
    local i
    for ((i = 0; i < BOOT_TIMEOUT * 20; i++)); do grep -q "$2" "$1" 2>/dev/null && return 0; nap 0.05; done
    die "timed out waiting for '$2' in $1"
}

least() { printf '%s\n' "$@" | sort -n | head -n 1; }
median() { printf '%s\n' "$@" | sort -n | awk '{ a[NR] = $1 } END { print (NR % 2) ? a[(NR + 1) / 2] : int((a[NR / 2] + a[NR / 2 + 1]) / 2) }'; }

# ---- the guest and its CPU -------------------------------------------------------------
cmdline_for() { # CASE
    case $1 in
    idle) echo "console=ttyS0 quiet cryptomgr.notests tern.mode=counter" ;;
    dirty) echo "console=ttyS0 quiet cryptomgr.notests tern.mode=memtouch tern.dirty_mb=$DIRTY_MB" ;;
    esac
}
ready_marker() { [[ $1 == dirty ]] && echo "TERN-GUEST: memtouch pass 1" || echo "TERN-GUEST: counter 3"; }
# The same -cpu Tern gives a host-passthrough guest.
CPU_ARG=$("$TERN" run --dry-run --kernel "$KERNEL" --initrd "$INITRD" --memory "${MEMORY}M" | tr ' ' '\n' | grep -A1 '^-cpu$' | tail -n 1)
[[ -n $CPU_ARG ]] || die "cannot read the -cpu argument from 'tern run --dry-run'"

qemu_args() { # CASE NAME
    echo -name "guest=$2" -machine q35 -accel tcg -cpu "$CPU_ARG" -m "${MEMORY}M" -smp 1 -nodefaults -no-user-config \
        -display none -kernel "$KERNEL" -initrd "$INITRD" -serial "file:$work/$2.log" \
        -qmp "unix:$work/$2.qmp,server=on,wait=off"
}

# qemu_launch NAME CASE [ARGS…]: QEMU with the guest of CASE in the background (its stderr in
# NAME.err), connected over QMP; LAUNCHED = its pid
LAUNCHED=""
qemu_launch() {
    local name=$1 c=$2
    shift 2
    # shellcheck disable=SC2046
    "$QEMU" $(qemu_args "$c" "$name") -append "$(cmdline_for "$c")" "$@" 2>"$work/$name.err" &
    LAUNCHED=$!
    disown
    PIDS+=($LAUNCHED)
    qmp_open "$name" "$work/$name.qmp"
}

declare -A RESULT   # RESULT[method,case,metric] = "v1 v2 …"
add() { RESULT[$1,$2,$3]+="$4 "; }

# ---- plain QEMU --------------------------------------------------------------------------
# One guest per method and case, moved back and forth: qemu_boot, then qemu_move per run. Between
# its moves the guest is stopped (QMP 'stop'), so that it takes no processor time from the other
# methods' moves. Method qemu streams over TCP (tcp:127.0.0.1:PORT, as between two machines);
# qemu-unix over a Unix socket (unix:PATH, the transport Tern picks between daemons on one machine).
declare -A QSRC QPID
qemu_boot() { # METHOD CASE
    local m=$1 c=$2 src=$1-$2-0
    qemu_launch "$src" "$c"
    QPID[$m,$c]=$LAUNCHED
    wait_console "$work/$src.log" "$(ready_marker "$c")"
    QSRC[$m,$c]=$src
    qmp "$src" '{"execute":"stop"}'
}
qemu_move() { # METHOD CASE RUN
    local m=$1 c=$2 src=${QSRC[$1,$2]} srcpid=${QPID[$1,$2]} dst=$1-$2-$3 uri t0 status dstpid k
    qmp "$src" '{"execute":"cont"}'
    settle
    if [[ $m == qemu-unix ]]; then uri="unix:$work/$dst.stream"; else uri="tcp:127.0.0.1:$((49000 + RANDOM % 1000))"; fi
    t0=$(now_us)
    qemu_launch "$dst" "$c" -incoming "$uri"
    dstpid=$LAUNCHED
    qmp "$src" '{"execute":"migrate-set-parameters","arguments":{"max-bandwidth":1099511627776}}'
    qmp "$src" "{\"execute\":\"migrate\",\"arguments\":{\"uri\":\"$uri\"}}"
    while :; do
        qmp "$src" '{"execute":"query-migrate"}'
        status=$(field status)
        [[ $status == completed || $status == failed ]] && break
        nap 0.002
    done
    [[ $status == completed ]] || die "plain QEMU migration failed: $REPLY"
    add "$m" "$c" bytes "$(field transferred)"
    add "$m" "$c" passes "$(field dirty-sync-count)"
    while :; do
        qmp "$dst" '{"execute":"query-status"}'
        [[ $(field status) == running ]] && break
        nap 0.001
    done
    add "$m" "$c" total $((($(now_us) - t0) / 1000))
    # The guest's downtime: the source's STOP event to the destination's RESUME event.
    for ((k = 0; k < 100; k++)); do [[ -n ${RESUMED[$dst]:-} ]] && break; qmp "$dst" '{"execute":"query-status"}'; nap 0.001; done
    add "$m" "$c" downtime $(((RESUMED[$dst] - STOPPED[$src]) / 1000))
    qmp_close "$src"
    kill -KILL "$srcpid" 2>/dev/null
    QSRC[$m,$c]=$dst
    QPID[$m,$c]=$dstpid
    qmp "$dst" '{"execute":"stop"}'
}
qemu_end() { # METHOD CASE
    qmp_close "${QSRC[$1,$2]}"
    kill -KILL "${QPID[$1,$2]}" 2>/dev/null
}

# ---- Tern --------------------------------------------------------------------------------
# The same for Tern: tern_boot, then tern_move per run ('tern suspend' between moves). Method
# tern names the destination daemon by its Unix socket, so the stream takes a Unix socket too;
# tern-tcp names it by its TCP endpoint, so the stream goes over TCP, as between two machines.
start_tern_vm() { # NAME CASE: define and start on daemon a
    "$TERN" define - --connect "$work/a/ternd.sock" >/dev/null <<EOF || die "tern define failed"
<domain type='qemu'>
  <name>$1</name>
  <memory unit='MiB'>$MEMORY</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='q35'>hvm</type><kernel>$KERNEL</kernel><initrd>$INITRD</initrd>
    <cmdline>$(cmdline_for "$2")</cmdline></os>${TERN_DEVICES:+
  <devices>$TERN_DEVICES</devices>}
</domain>
EOF
    "$TERN" start "$1" --connect "$work/a/ternd.sock" >/dev/null || die "tern start failed"
}

declare -A TFROM TCP_PORT
endpoint() { # METHOD DAEMON
    if [[ $1 == tern-tcp ]]; then echo "tcp://127.0.0.1:${TCP_PORT[$2]}"; else echo "$work/$2/ternd.sock"; fi
}
tern_boot() { # METHOD CASE
    local vm=$1-$2
    start_tern_vm "$vm" "$2"
    wait_console "$work/a/vms/$vm/console.log" "$(ready_marker "$2")"
    TFROM[$vm]=a
    "$TERN" suspend "$vm" --connect "$work/a/ternd.sock" >/dev/null || die "tern suspend failed"
}
tern_move() { # METHOD CASE: alternating directions
    local m=$1 c=$2 vm=$1-$2 from to t0 out
    from=${TFROM[$vm]}
    [[ $from == a ]] && to=b || to=a
    "$TERN" resume "$vm" --connect "$work/$from/ternd.sock" >/dev/null || die "tern resume failed"
    settle
    t0=$(now_us)
    out=$("$TERN" migrate "$vm" --to "$(endpoint "$m" "$to")" --connect "$(endpoint "$m" "$from")" ${TERN_ARGS:-}) \
        || die "tern migrate failed: $out"
    add "$m" "$c" total $((($(now_us) - t0) / 1000))
    add "$m" "$c" downtime "$(awk '/downtime/ { print $2 }' <<<"$out")"
    add "$m" "$c" bytes "$(awk '/transferred/ { printf "%d", $2 * 1048576 }' <<<"$out")"
    add "$m" "$c" passes "$(awk '/transferred/ { for (i = 1; i < NF; i++) if ($i == "in") print $(i + 1) }' <<<"$out")$(grep -q '(non-live)' <<<"$out" && echo n)"
    TFROM[$vm]=$to
    "$TERN" suspend "$vm" --connect "$work/$to/ternd.sock" >/dev/null || die "tern suspend failed"
}
tern_end() { # METHOD CASE
    "$TERN" destroy "$1-$2" --connect "$work/${TFROM[$1-$2]}/ternd.sock" >/dev/null
    "$TERN" undefine "$1-$2" --connect "$work/${TFROM[$1-$2]}/ternd.sock" >/dev/null
}

# ---- libvirt ------------------------------------------------------------------------------
# libvirt refuses to migrate a domain to a daemon reporting its own host UUID, so one machine
# runs two session-mode libvirtd, each with its own host_uuid, runtime, config and cache
# directories (XDG_*), as an unprivileged user (a root libvirtd is always the system one).
# Each runs under a small child subreaper: libvirt daemonizes QEMU and, at the end of a
# migration, polls every 200 ms until the source QEMU's pid is gone; an init that reaps late
# (as in some containers) would add up to seconds that a systemd host does not have.
# Figures: total = the wall time of 'virsh migrate' (destination QEMU start included, as for
# tern); downtime = libvirt's 'Total downtime' (source stop to destination resume).
VIRSH_REASON=""
LV_USER=${LV_USER:-libvirt-qemu}
declare -A LV_URI LV_PID
libvirt_up() {
    [[ -n ${LV_URI[a]:-} ]] && return 0
    command -v virsh >/dev/null && [[ -x /usr/sbin/libvirtd ]] || { VIRSH_REASON="libvirt is not installed"; return 1; }
    id "$LV_USER" >/dev/null 2>&1 || { VIRSH_REASON="no user $LV_USER to run session libvirtd"; return 1; }
    local group d r i
    group=$(id -gn "$LV_USER")
    cat >"$work/reaper.py" <<'PY'
import ctypes, os, signal, sys
ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
main = os.fork()
if main == 0:
    os.execv(sys.argv[1], sys.argv[1:])
for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
    signal.signal(s, lambda n, f: os.kill(main, n))
while True:
    try:
        pid, _ = os.wait()
    except InterruptedError:
        continue
    except ChildProcessError:
        break
    if pid == main:
        break
PY
    chmod 755 "$work"
    chmod 644 "$work/reaper.py" "$KERNEL" "$INITRD" 2>/dev/null
    for d in a b; do
        r=$work/lv-$d
        mkdir -p "$r/run" "$r/config/libvirt" "$r/cache" "$r/home"
        printf 'host_uuid = "%s"\n' "$(cat /proc/sys/kernel/random/uuid)" >"$r/config/libvirt/libvirtd.conf"
        chown -R "$LV_USER:$group" "$r"
        chmod 700 "$r/run"
        setpriv --reuid="$LV_USER" --regid="$group" --init-groups /usr/bin/python3 "$work/reaper.py" \
            /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C HOME="$r/home" XDG_RUNTIME_DIR="$r/run" \
            XDG_CONFIG_HOME="$r/config" XDG_CACHE_HOME="$r/cache" \
            /usr/sbin/libvirtd --config "$r/config/libvirt/libvirtd.conf" >"$r/libvirtd.log" 2>&1 &
        LV_PID[$d]=$!
        PIDS+=($!)
        disown
        LV_URI[$d]="qemu+unix:///session?socket=$r/run/libvirt/libvirt-sock"
        for ((i = 0; i < 300; i++)); do
            virsh -q -c "${LV_URI[$d]}" version >/dev/null 2>&1 && break
            kill -0 "${LV_PID[$d]}" 2>/dev/null || { VIRSH_REASON="libvirtd exited: $(tail -n 2 "$r/libvirtd.log")"; return 1; }
            nap 0.1
        done
    done
}
libvirt_down() {
    local d p
    for d in a b; do
        [[ -n ${LV_PID[$d]:-} ]] || continue
        kill -TERM "${LV_PID[$d]}" 2>/dev/null
        p=$(cat "$work/lv-$d/run/libvirt/virtlogd.pid" 2>/dev/null)
        [[ -n $p ]] && grep -qa virtlogd "/proc/$p/cmdline" 2>/dev/null && kill -TERM "$p" 2>/dev/null
    done
}
bench_virsh() { # CASE
    local c=$1 name=bench-lv-$1 dir=$work/lv-guest-$1 from=a to=b i t0 wall port out job
    libvirt_up || return 1
    mkdir -p "$dir" && chown "$LV_USER" "$dir"
    # append='on': the destination QEMU opens the same console file and must not truncate it
    cat >"$dir/domain.xml" <<EOF
<domain type='qemu'>
  <name>$name</name>
  <memory unit='MiB'>$MEMORY</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='q35'>hvm</type><kernel>$KERNEL</kernel><initrd>$INITRD</initrd><cmdline>$(cmdline_for "$c")</cmdline></os>
  <features><acpi/><apic/></features>
  <cpu mode='custom' match='exact'><model fallback='forbid'>qemu64</model><feature policy='disable' name='vme'/><feature policy='disable' name='svm'/></cpu>
  <on_poweroff>destroy</on_poweroff><on_reboot>destroy</on_reboot><on_crash>destroy</on_crash>
  <devices>
    <controller type='usb' model='none'/>
    <serial type='file'><source path='$dir/console.log' append='on'/><target port='0'/></serial>
    <console type='file'><source path='$dir/console.log' append='on'/><target type='serial' port='0'/></console>
    <memballoon model='none'/>
  </devices>
</domain>
EOF
    # persistent on both ends, so the side that just sent the guest keeps its job report
    virsh -q -c "${LV_URI[a]}" define "$dir/domain.xml" >/dev/null && virsh -q -c "${LV_URI[a]}" start "$name" >/dev/null \
        || { VIRSH_REASON="libvirt could not start the guest"; return 1; }
    wait_console "$dir/console.log" "$(ready_marker "$c")"
    for ((i = 1; i <= RUNS; i++)); do
        settle
        port=$((48000 + RANDOM % 1000))
        t0=$(now_us)
        out=$(virsh -c "${LV_URI[$from]}" migrate "$name" "${LV_URI[$to]}" --live --p2p --persistent \
            --migrateuri "tcp://127.0.0.1:$port" --listen-address 127.0.0.1 --bandwidth 1048576 2>&1) \
            || { VIRSH_REASON="virsh migrate failed: $out"; return 1; }
        wall=$((($(now_us) - t0) / 1000))
        [[ $(virsh -q -c "${LV_URI[$to]}" domstate "$name") == running ]] || { VIRSH_REASON="not running after migrate"; return 1; }
        job=$(virsh -c "${LV_URI[$from]}" domjobinfo --completed "$name" 2>&1)
        add virsh "$c" total "$wall"
        add virsh "$c" downtime "$(awk -F: '$1 == "Total downtime" { split($2, a, " "); print a[1] }' <<<"$job")"
        add virsh "$c" passes "$(awk -F: '$1 == "Iteration" { print $2 + 0 }' <<<"$job")"
        add virsh "$c" bytes "$(awk -F: '$1 == "Data processed" { split($2, a, " "); m = (a[2] == "GiB") ? 1073741824 : (a[2] == "MiB") ? 1048576 : (a[2] == "KiB") ? 1024 : 1; printf "%d", a[1] * m }' <<<"$job")"
        local x=$from
        from=$to
        to=$x
    done
    virsh -q -c "${LV_URI[$from]}" destroy "$name" >/dev/null 2>&1
    for d in a b; do virsh -q -c "${LV_URI[$d]}" undefine "$name" >/dev/null 2>&1; done
    VIRSH_REASON="two session libvirtd with their own host UUIDs, 'virsh migrate --live --p2p --bandwidth 1048576'"
}

# ---- save / restore ------------------------------------------------------------------------
# Tern and QEMU take turns here too, run by run; each guest is paused between its turns and
# runs SETTLE (+ JITTER) seconds before its save.
tern_save_restore() { # NAME: one 'tern save' and one 'tern restore' of a running guest
    local name=$1 file=$work/bench.ternsave t0
    "$TERN" resume "$name" --connect "$work/a/ternd.sock" >/dev/null || die "tern resume failed"
    settle
    t0=$(now_us)
    "$TERN" save "$name" "$file" --connect "$work/a/ternd.sock" >/dev/null || die "tern save failed"
    add tern save ms $((($(now_us) - t0) / 1000))
    add tern save bytes "$(stat -c %s "$file")"
    t0=$(now_us)
    "$TERN" restore "$file" --connect "$work/a/ternd.sock" >/dev/null || die "tern restore failed"
    add tern restore ms $((($(now_us) - t0) / 1000))
    rm -f "$file"
    "$TERN" suspend "$name" --connect "$work/a/ternd.sock" >/dev/null || die "tern suspend failed"
}
QS_NAME="" QS_PID=""
qemu_save_restore() { # RUN: QEMU by hand: stop, migrate to a file; a new QEMU with -incoming from it, cont
    local qfile=$work/bench.qemusave src=$QS_NAME dst=qs-$1 t0
    qmp "$src" '{"execute":"cont"}'
    settle
    t0=$(now_us)
    qmp "$src" '{"execute":"stop"}'
    qmp "$src" '{"execute":"migrate-set-parameters","arguments":{"max-bandwidth":1099511627776}}'
    qmp "$src" "{\"execute\":\"migrate\",\"arguments\":{\"uri\":\"exec:cat > $qfile\"}}"
    qmp_wait_migrated "$src" save
    sync -f "$qfile"
    add qemu save ms $((($(now_us) - t0) / 1000))
    add qemu save bytes "$(stat -c %s "$qfile")"
    qmp_close "$src"
    kill -KILL "$QS_PID"
    t0=$(now_us)
    qemu_launch "$dst" idle -incoming "exec:cat $qfile"
    QS_PID=$LAUNCHED
    # The state was saved stopped, so QEMU keeps it stopped once loaded: then 'cont'.
    qmp_wait_migrated "$dst" restore
    qmp "$dst" '{"execute":"cont"}'
    add qemu restore ms $((($(now_us) - t0) / 1000))
    rm -f "$qfile"
    qmp "$dst" '{"execute":"stop"}'
    QS_NAME=$dst
}
bench_save_restore() {
    local i name=bench-save
    start_tern_vm "$name" idle
    wait_console "$work/a/vms/$name/console.log" "TERN-GUEST: counter 3"
    "$TERN" suspend "$name" --connect "$work/a/ternd.sock" >/dev/null || die "tern suspend failed"
    QS_NAME=qs-0
    qemu_launch "$QS_NAME" idle
    QS_PID=$LAUNCHED
    wait_console "$work/$QS_NAME.log" "TERN-GUEST: counter 3"
    qmp "$QS_NAME" '{"execute":"stop"}'
    for ((i = 1; i <= RUNS; i++)); do
        if ((i % 2)); then
            tern_save_restore "$name"
            qemu_save_restore "$i"
        else
            qemu_save_restore "$i"
            tern_save_restore "$name"
        fi
    done
    "$TERN" destroy "$name" --connect "$work/a/ternd.sock" >/dev/null
    qmp_close "$QS_NAME"
    kill -KILL "$QS_PID"
}

# ---- run ---------------------------------------------------------------------------------
TCP_PORT=([a]=$((47000 + RANDOM % 500)) [b]=$((47500 + RANDOM % 500)))
for d in a b; do
    mkdir -p "$work/$d"
    "$TERND" --state-dir "$work/$d" --listen "127.0.0.1:${TCP_PORT[$d]}" >"$work/$d.log" 2>&1 &
    PIDS+=($!)
    disown
done
for d in a b; do
    for ((i = 0; i < 600; i++)); do "$TERN" list --connect "$work/$d/ternd.sock" >/dev/null 2>&1 && break; nap 0.1; done
done

# Tern and plain QEMU take turns, move by move, so that the host's drift (large on a shared
# machine) weighs on all alike; each guest runs only for its own moves. Who goes first rotates
# run by run: a move made right after another method's pays for whatever that one left behind
# (a QEMU's memory being freed), and that should fall on all alike too.
TURNS=()
for m in tern qemu tern-tcp qemu-unix; do wants "$m" && TURNS+=("$m"); done
move() { # METHOD CASE RUN
    case $1 in tern | tern-tcp) tern_move "$1" "$2" ;; *) qemu_move "$1" "$2" "$3" ;; esac
}
for c in $CASES; do
    log "case $c: ${TURNS[*]}, in turns ($RUNS runs each)"
    for m in "${TURNS[@]}"; do
        case $m in tern | tern-tcp) tern_boot "$m" "$c" ;; *) qemu_boot "$m" "$c" ;; esac
    done
    for ((i = 1; i <= RUNS; i++)); do
        for ((k = 0; k < ${#TURNS[@]}; k++)); do
            move "${TURNS[(i - 1 + k) % ${#TURNS[@]}]}" "$c" "$i"
        done
    done
    for m in "${TURNS[@]}"; do
        case $m in tern | tern-tcp) tern_end "$m" "$c" ;; *) qemu_end "$m" "$c" ;; esac
    done
    if wants virsh; then
        log "case $c: virsh migrate ($RUNS runs)"
        bench_virsh "$c" || log "virsh: $VIRSH_REASON"
    fi
done
libvirt_down
if wants save; then
    log "save/restore ($RUNS runs)"
    bench_save_restore
fi

# What on this machine makes a process's first touch of memory costly at times: the figures'
# spread between runs comes mostly from it (see the top of this file).
host_memory() {
    local notes=() state scheme
    [[ -r /sys/module/page_reporting/parameters/page_reporting_order ]] &&
        notes+=("free pages reported to the machine's own host (order $(cat /sys/module/page_reporting/parameters/page_reporting_order))")
    for state in /sys/kernel/mm/damon/admin/kdamonds/*/state; do
        [[ $(cat "$state" 2>/dev/null) == on ]] || continue
        for scheme in "${state%/state}"/contexts/*/schemes/*/action; do
            [[ $(cat "$scheme" 2>/dev/null) == pageout ]] && { notes+=("DAMON paging out memory left idle"); break 2; }
        done
    done
    [[ -r /sys/kernel/mm/transparent_hugepage/enabled ]] &&
        notes+=("transparent huge pages $(grep -o '\[[a-z]*\]' /sys/kernel/mm/transparent_hugepage/enabled)")
    ((${#notes[@]})) || { echo "nothing known"; return; }
    local joined
    printf -v joined '%s; ' "${notes[@]}"
    echo "${joined%; }"
}

mib() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1048576 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }'; }

echo
echo "Live migration, ${MEMORY} MiB guest, TCG, medians of $RUNS runs. tern = 'tern migrate' defaults between"
echo "daemons named by their Unix sockets (so the stream takes a Unix socket); qemu = plain QEMU over QMP,"
echo "bandwidth cap lifted, otherwise defaults, over TCP; virsh = libvirt over TCP. Like against like on the"
echo "transport: tern-tcp = Tern between daemons named by TCP endpoints (stream over TCP, as between"
echo "machines); qemu-unix = plain QEMU over a Unix socket. least: the fastest run's total and the shortest"
echo "downtime, what each costs when the host does not get in the way"
echo "Host memory: $(host_memory)"
printf '%-7s %-16s %10s %10s %10s %12s %14s\n' case method total_ms downtime_ms MiB MiB/s "least t/d ms"
for c in idle dirty; do
    for m in tern qemu virsh tern-tcp qemu-unix; do
        [[ -n ${RESULT[$m,$c,total]:-} ]] || continue
        t=$(median ${RESULT[$m,$c,total]})
        d=$(median ${RESULT[$m,$c,downtime]})
        b=$(median ${RESULT[$m,$c,bytes]})
        printf '%-7s %-16s %10s %10s %10s %12s %14s\n' "$c" "$m" "$t" "$d" "$(mib "$b")" \
            "$(awk -v b="$b" -v t="$t" 'BEGIN { printf "%.0f", b / 1048576 / (t / 1000) }')" \
            "$(least ${RESULT[$m,$c,total]})/$(least ${RESULT[$m,$c,downtime]})"
    done
    # Tern against each peer; then like against like on the transport.
    for pair in tern/qemu tern/virsh tern/qemu-unix tern-tcp/qemu; do
        t=${pair%/*} m=${pair#*/}
        [[ -n ${RESULT[$m,$c,total]:-} && -n ${RESULT[$t,$c,total]:-} ]] || continue
        printf '%-7s %-16s %10s %10s\n' "$c" "$pair" \
            "$(ratio "$(median ${RESULT[$t,$c,total]})" "$(median ${RESULT[$m,$c,total]})")" \
            "$(ratio "$(median ${RESULT[$t,$c,downtime]})" "$(median ${RESULT[$m,$c,downtime]})")"
    done
done
wants virsh && echo "virsh: $VIRSH_REASON"
echo "Every run, in order (total ms / downtime ms / passes over memory; n: non-live, the live attempt"
echo "given up); the first move of a freshly booted guest is the slowest. Under TCG a live move of 4 or"
echo "more passes (!) may have lost guest writes: QEMU's dirty tracking misses some (see README.md)."
# runs "LIST1" "LIST2" …: the lists' figures run by run, " a1/b1 a2/b2 …" ('?' where one is missing)
runs() {
    local lists=("$@") first k i line="" v
    read -r -a first <<<"$1"
    for ((k = 0; k < ${#first[@]}; k++)); do
        line+=" "
        for ((i = 0; i < ${#lists[@]}; i++)); do
            read -r -a v <<<"${lists[i]}"
            ((i > 0)) && line+="/"
            line+=${v[k]:-?}
        done
    done
    echo "$line"
}
for c in idle dirty; do
    for m in tern qemu virsh tern-tcp qemu-unix; do
        [[ -n ${RESULT[$m,$c,total]:-} ]] || continue
        passes=""
        for p in ${RESULT[$m,$c,passes]:-}; do
            [[ $p =~ ^[0-9]+$ && $p -ge 4 ]] && p+="!"
            passes+="$p "
        done
        printf '  %-6s %-9s%s\n' "$c" "$m" "$(runs "${RESULT[$m,$c,total]}" "${RESULT[$m,$c,downtime]:-}" "$passes")"
    done
done
wants save || exit 0
echo
echo "Save and restore, ${MEMORY} MiB idle guest, medians of $RUNS runs"
printf '%-6s %10s %12s %10s\n' method save_ms restore_ms file_MiB
for m in tern qemu; do
    printf '%-6s %10s %12s %10s\n' "$m" "$(median ${RESULT[$m,save,ms]})" "$(median ${RESULT[$m,restore,ms]})" \
        "$(mib "$(median ${RESULT[$m,save,bytes]})")"
done
printf '%-6s %10s %12s\n' ratio "$(ratio "$(median ${RESULT[tern,save,ms]})" "$(median ${RESULT[qemu,save,ms]})")" \
    "$(ratio "$(median ${RESULT[tern,restore,ms]})" "$(median ${RESULT[qemu,restore,ms]})")"
echo "Every run, in order (save ms / restore ms):"
for m in tern qemu; do printf '  %-9s%s\n' "$m" "$(runs "${RESULT[$m,save,ms]}" "${RESULT[$m,restore,ms]}")"; done
