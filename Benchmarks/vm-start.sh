#!/usr/bin/env bash
# Time from "start the VM" to the guest's "TERN-GUEST: ready" marker, four ways:
#   1. raw QEMU: the exact command line 'tern run --dry-run' prints, run by hand
#   2. tern run with the same arguments
#   3. tern start through a running ternd (console log in its state dir)
#   4. virsh create of the equivalent libvirt domain (qemu:///system)
# and the resident memory (VmRSS) of ternd vs. libvirtd, each with one VM running.
# Issue targets: tern adds < 50 ms to raw QEMU, starts faster than libvirt, ternd uses
# less memory than libvirtd.
#
# Usage: [RUNS=5] [TERN_BIN=.build/debug] Benchmarks/vm-start.sh
#   RUNS          timed iterations (default 5); the four methods are interleaved per iteration
#   WARMUP        untimed warm-up iterations first (default 1)
#   TERN_BIN      directory with tern and ternd; when unset, scripts/build-release.sh is run
#                 and its .build-release/release is used
#   CPU           guest CPU in tern's --cpu syntax (default qemu64,-vme,-svm); the libvirt
#                 domain gets the same model with the same features disabled
#   BOOT_TIMEOUT  seconds to wait for the marker (default 120); every other wait has a limit too
#   SETTLE        seconds of quiet before each start (default 1)
# Needs root (libvirt's qemu:///system; starts libvirtd/virtlogd when absent and stops them
# again at the end). TCG only: QEMU is never given KVM here.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
REPO=$(pwd)

RUNS=${RUNS:-5}
WARMUP=${WARMUP:-1}
CPU=${CPU:-qemu64,-vme,-svm}
BOOT_TIMEOUT=${BOOT_TIMEOUT:-120}
SETTLE=${SETTLE:-1}          # seconds of quiet before each timed start
MARKER='TERN-GUEST: ready'
CMDLINE_FLAGS='console=ttyS0 quiet cryptomgr.notests tern.mode=flags'
CMDLINE_IDLE='console=ttyS0 quiet cryptomgr.notests tern.mode=counter'
VIRSH=(virsh -q -c qemu:///system)
LV_NAME=tern-bench-$$        # libvirt domains are host-wide: keep our names unique
LV_IDLE=tern-bench-idle-$$

die() { echo "vm-start: error: $*" >&2; exit 1; }
log() { echo "vm-start: $*" >&2; }

[[ ${BASH_VERSINFO[0]} -ge 5 ]] || die "needs bash >= 5 (EPOCHREALTIME)"
[[ $RUNS =~ ^[1-9][0-9]*$ ]] || die "RUNS must be a positive number"
[[ $WARMUP =~ ^[0-9]+$ ]] || die "WARMUP must be a number"
[[ $(id -u) -eq 0 ]] || die "run as root (libvirt qemu:///system, libvirtd/virtlogd start)"

# ---- clock and fork-free sleep ---------------------------------------------------------
now() { local t=$EPOCHREALTIME; NOW=${t//[!0-9]/}; }   # microseconds, no fork
# nap SECONDS: 'read -t' on a FIFO that nobody writes to (fd 9, opened below)
nap() { read -r -t "$1" -u 9 _ 2>/dev/null; return 0; }

# ---- cleanup ---------------------------------------------------------------------------
work=""
BG_PIDS=()          # commands we launched in the background (qemu, tern run, tern start, virsh)
QEMU_PIDS=()        # QEMUs daemonized by ternd
TERND_PID=""
STARTED_LIBVIRTD=""  # pid, when this script started libvirtd
STARTED_VIRTLOGD=""
TERN_NAMES=()

alive() { # running and not a zombie (daemons here may be re-parented to an init that does not reap)
    local st
    [[ -n $1 ]] && kill -0 "$1" 2>/dev/null && read -r st < "/proc/$1/stat" 2>/dev/null || return 1
    st=${st##*) }
    [[ ${st:0:1} != Z ]]
}
stop_pid() { # pid: TERM, then KILL after 3 s
    alive "$1" || return 0
    kill -TERM "$1" 2>/dev/null
    local i
    for ((i = 0; i < 60; i++)); do alive "$1" || return 0; nap 0.05; done
    kill -KILL "$1" 2>/dev/null
    return 0
}
is_qemu() { [[ -r /proc/$1/cmdline ]] && tr '\0' ' ' < "/proc/$1/cmdline" | grep -q qemu-system; }

cleanup() {
    trap - EXIT INT TERM
    local p n
    for p in "${BG_PIDS[@]}"; do
        # tern run's QEMU is its child: end it by parent id first
        if alive "$p"; then pkill -TERM -P "$p" 2>/dev/null; stop_pid "$p"; fi
    done
    if alive "$TERND_PID"; then
        for n in "${TERN_NAMES[@]}"; do timeout 15 "$TERN" destroy "$n" >/dev/null 2>&1; done
        for n in "${TERN_NAMES[@]}"; do timeout 15 "$TERN" undefine "$n" >/dev/null 2>&1; done
        stop_pid "$TERND_PID"
    fi
    for p in "${QEMU_PIDS[@]}"; do alive "$p" && is_qemu "$p" && stop_pid "$p"; done
    if command -v virsh >/dev/null; then
        for n in "$LV_NAME" "$LV_IDLE"; do
            timeout 15 "${VIRSH[@]}" domid "$n" >/dev/null 2>&1 \
                && timeout 15 "${VIRSH[@]}" destroy "$n" >/dev/null 2>&1
        done
    fi
    if [[ -n $STARTED_LIBVIRTD ]]; then stop_pid "$STARTED_LIBVIRTD"; fi
    if [[ -n $STARTED_VIRTLOGD ]]; then stop_pid "$STARTED_VIRTLOGD"; fi
    exec 9>&-
    [[ -n $work && -d $work ]] && rm -rf "$work"
}
trap cleanup EXIT
trap 'echo "vm-start: interrupted" >&2; exit 130' INT TERM

# ---- prerequisites ---------------------------------------------------------------------
scripts/install-deps.sh >/dev/null || die "scripts/install-deps.sh failed"
if [[ -z ${TERN_BIN:-} ]]; then
    log "building release binaries (scripts/build-release.sh: static Swift runtime)"
    TERN_BIN=$(scripts/build-release.sh) || die "scripts/build-release.sh failed"
fi
TERN_BIN=$(cd "$TERN_BIN" 2>/dev/null && pwd) || die "TERN_BIN directory missing"
TERN=$TERN_BIN/tern
TERND=$TERN_BIN/ternd
[[ -x $TERN && -x $TERND ]] || die "$TERN or $TERND missing"
mapfile -t guest < <(scripts/build-guest.sh 2>/dev/null)
[[ ${#guest[@]} -eq 2 && -f ${guest[0]} && -f ${guest[1]} ]] || die "scripts/build-guest.sh failed"

work=$(mktemp -d "${TMPDIR:-/tmp}/tern-vm-start.XXXXXX") || die "mktemp failed"
chmod 0755 "$work"   # libvirt's QEMU may run as another user: guest files must be readable
mkfifo "$work/nap.fifo" && exec 9<>"$work/nap.fifo" || die "mkfifo failed"
mkdir -p "$work/guest" "$work/raw" "$work/run" "$work/lv" "$work/start" "$work/ternd"
cp "${guest[0]}" "$work/guest/vmlinuz" && cp "${guest[1]}" "$work/guest/initramfs.cpio.gz" || die "copy guest"
chmod 0755 "$work/guest" && chmod 0644 "$work/guest/"*
KERNEL=$work/guest/vmlinuz
INITRD=$work/guest/initramfs.cpio.gz
RUN_ARGS=(--kernel "$KERNEL" --initrd "$INITRD" --cmdline "$CMDLINE_FLAGS" --memory 256M --cpus 1 --cpu "$CPU")

# ---- waiting ---------------------------------------------------------------------------
LAUNCH_RC=""
# reap PID: collect its exit status into LAUNCH_RC once it has exited
reap() { if [[ -z $LAUNCH_RC ]] && ! alive "$1"; then wait "$1" 2>/dev/null; LAUNCH_RC=$?; fi; }

# wait_ready FILE PID KIND ERRFILE: poll FILE every 5 ms until some line contains the marker;
# sets READY (µs). KIND 'fg': PID must stay alive until then; 'bg': PID may exit, but with 0.
wait_ready() {
    local file=$1 pid=$2 kind=$3 errfile=$4 buf="" line fd="" deadline
    now; deadline=$((NOW + BOOT_TIMEOUT * 1000000))
    LAUNCH_RC=""
    while :; do
        if [[ -z $fd && -e $file ]]; then exec {fd}<"$file" || die "cannot read $file"; fi
        if [[ -n $fd ]]; then
            while IFS= read -r -u "$fd" line; do
                buf+=$line
                if [[ $buf == *"$MARKER"* ]]; then now; READY=$NOW; exec {fd}<&-; return 0; fi
                buf=""
            done
            buf+=$line   # a partial line at EOF: keep it, the rest comes later
            if [[ $buf == *"$MARKER"* ]]; then now; READY=$NOW; exec {fd}<&-; return 0; fi
        fi
        reap "$pid"
        if [[ -n $LAUNCH_RC ]] && { [[ $kind == fg ]] || [[ $LAUNCH_RC -ne 0 ]]; }; then
            [[ -n $fd ]] && exec {fd}<&-
            echo "--- stderr of the launching command:" >&2; tail -n 20 "$errfile" >&2
            [[ -e $file ]] && { echo "--- console:" >&2; tail -n 20 "$file" >&2; }
            die "'$kind' command exited with status $LAUNCH_RC before '$MARKER' appeared in $file"
        fi
        now
        if ((NOW > deadline)); then
            [[ -n $fd ]] && exec {fd}<&-
            [[ -e $file ]] && { echo "--- console:" >&2; tail -n 20 "$file" >&2; }
            die "timed out after ${BOOT_TIMEOUT}s waiting for '$MARKER' in $file"
        fi
        nap 0.005
    done
}

# wait_exit PID SECONDS WHAT: the guest powers off by itself after printing its flags
wait_exit() {
    local pid=$1 limit=$(($2 * 20)) i
    for ((i = 0; i < limit; i++)); do alive "$pid" || break; nap 0.05; done
    if alive "$pid"; then
        log "warning: $3 still running after $2 s; killing it"
        pkill -TERM -P "$pid" 2>/dev/null; stop_pid "$pid"
    fi
    wait "$pid" 2>/dev/null
    local rc=$?
    [[ -n $LAUNCH_RC ]] || LAUNCH_RC=$rc
    return 0
}

# until_ok SECONDS WHAT CMD...: retry CMD every 0.1 s until it succeeds
until_ok() {
    local limit=$(($1 * 10)) what=$2 i
    shift 2
    for ((i = 0; i < limit; i++)); do "$@" >/dev/null 2>&1 && return 0; nap 0.1; done
    die "timed out waiting for $what"
}

rss_kb() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status" 2>/dev/null; }
# "anon file pss" in KiB: private (anonymous) resident memory, file-backed resident pages (code
# and read-only data of the program and its libraries, shared with any other process using
# them and reclaimable), and the proportional set size.
mem_split() {
    local a f p
    a=$(awk '/^RssAnon:/ { print $2 }' "/proc/$1/status" 2>/dev/null)
    f=$(awk '/^RssFile:/ { print $2 }' "/proc/$1/status" 2>/dev/null)
    p=$(awk '/^Pss:/ { print $2 }' "/proc/$1/smaps_rollup" 2>/dev/null)
    echo "${a:-0} ${f:-0} ${p:-0}"
}

# ---- libvirt ---------------------------------------------------------------------------
pidfile_pid() { # the pid in a pid file (often without a trailing newline), if it runs
    local p=""
    [[ -r $1 ]] && { read -r p < "$1" || [[ -n $p ]]; } && alive "$p" && echo "$p"
}
libvirt_ok() { timeout 60 "${VIRSH[@]}" version >/dev/null 2>&1; }
if [[ ! -S /run/libvirt/virtlogd-sock ]]; then
    log "starting virtlogd -d (libvirt's QEMU needs it for its log)"
    virtlogd -d || die "virtlogd -d failed"
    until_ok 20 "virtlogd's pid file" pidfile_pid /run/virtlogd.pid
    STARTED_VIRTLOGD=$(pidfile_pid /run/virtlogd.pid)
    until_ok 20 "virtlogd's socket" test -S /run/libvirt/virtlogd-sock
fi
if ! libvirt_ok; then
    log "starting libvirtd -d"
    libvirtd -d || die "libvirtd -d failed"
    until_ok 30 "libvirtd's pid file" pidfile_pid /run/libvirtd.pid
    STARTED_LIBVIRTD=$(pidfile_pid /run/libvirtd.pid)
    until_ok 60 "libvirtd to answer 'virsh version'" libvirt_ok
fi
LIBVIRTD_PID=$(pidfile_pid /run/libvirtd.pid || pgrep -o -x libvirtd) || die "cannot find libvirtd's pid"
# warm-up: the first qemu:///system calls probe QEMU (several seconds)
timeout 120 "${VIRSH[@]}" domcapabilities --virttype qemu --arch x86_64 --machine q35 >/dev/null 2>&1 \
    || die "virsh domcapabilities failed (libvirt cannot use QEMU)"

# The same guest CPU for libvirt: model + disabled features from $CPU ("model,-f1,-f2").
IFS=, read -r -a cpu_parts <<< "$CPU"
LV_CPU="<cpu mode='custom' match='exact'><model fallback='forbid'>${cpu_parts[0]}</model>"
for f in "${cpu_parts[@]:1}"; do
    case $f in
        -*) LV_CPU+="<feature policy='disable' name='${f#-}'/>" ;;
        +*) LV_CPU+="<feature policy='require' name='${f#+}'/>" ;;
        *=off) LV_CPU+="<feature policy='disable' name='${f%=off}'/>" ;;
        *=on) LV_CPU+="<feature policy='require' name='${f%=on}'/>" ;;
        *) LV_CPU+="<feature policy='require' name='$f'/>" ;;
    esac
done
LV_CPU+="</cpu>"

os_xml() { # cmdline
    echo "  <os><type arch='x86_64' machine='q35'>hvm</type><kernel>$KERNEL</kernel><initrd>$INITRD</initrd><cmdline>$1</cmdline></os>"
}
libvirt_xml() { # name cmdline consolelog
    cat <<EOF
<domain type='qemu'>
  <name>$1</name>
  <memory unit='MiB'>256</memory>
  <vcpu>1</vcpu>
$(os_xml "$2")
  <features><acpi/><apic/></features>
  $LV_CPU
  <on_poweroff>destroy</on_poweroff><on_reboot>destroy</on_reboot><on_crash>destroy</on_crash>
  <devices>
    <controller type='usb' model='none'/>
    <serial type='file'><source path='$3'/><target port='0'/></serial>
    <console type='file'><source path='$3'/><target type='serial' port='0'/></console>
    <memballoon model='none'/>
    <panic model='isa'/>
  </devices>
</domain>
EOF
}
tern_xml() { # name cmdline
    cat <<EOF
<domain type='qemu'>
  <name>$1</name>
  <memory unit='MiB'>256</memory>
  <vcpu>1</vcpu>
$(os_xml "$2")
  $LV_CPU
</domain>
EOF
}

# ---- ternd -----------------------------------------------------------------------------
export TERN_CONNECT=$work/ternd/ternd.sock
"$TERND" --state-dir "$work/ternd" > "$work/ternd.log" 2>&1 &
TERND_PID=$!
until_ok 30 "ternd to answer on $TERN_CONNECT" "$TERN" list
tern_xml tern-bench "$CMDLINE_FLAGS" > "$work/tern-bench.xml"
tern_xml tern-bench-idle "$CMDLINE_IDLE" > "$work/tern-bench-idle.xml"
for n in tern-bench tern-bench-idle; do
    "$TERN" define "$work/$n.xml" > /dev/null 2> "$work/define.err" || { cat "$work/define.err" >&2; die "tern define $n failed"; }
    TERN_NAMES+=("$n")
done
TERN_LOG=$work/ternd/vms/tern-bench/console.log
tern_state() { timeout 15 "$TERN" dominfo "$1" --json 2>/dev/null | sed -n 's/.*"state" *: *"\([a-z]*\)".*/\1/p'; }
tern_pid() { timeout 15 "$TERN" dominfo "$1" --json 2>/dev/null | sed -n 's/.*"pid" *: *\([0-9]*\).*/\1/p'; }
tern_is_off() { [[ $(tern_state "$1") == shutoff ]]; }

# ---- the raw QEMU command line ---------------------------------------------------------
dry=$("$TERN" run "${RUN_ARGS[@]}" --dry-run 2> "$work/dry.err") || { cat "$work/dry.err" >&2; die "tern run --dry-run failed"; }
eval "RAW_TEMPLATE=($dry)" || die "cannot parse the dry-run command line"
# tern run's own temp dir (console log and QMP socket): give each raw run a fresh one instead
dry_dir=$(grep -o 'logfile=[^,]*' <<< "$dry" | head -n 1 | sed 's/^logfile=//; s,/[^/]*$,,')
[[ -n $dry_dir ]] || die "no logfile= in the dry-run command line: $dry"
RAW_CMD=()
for a in "${RAW_TEMPLATE[@]}"; do [[ $a == -S ]] || RAW_CMD+=("$a"); done

# ---- one run of each method; each sets T (µs from launch to marker) --------------------
run_raw() { # iteration
    local d=$work/raw/$1 cmd=() a pid
    mkdir -p "$d"
    for a in "${RAW_CMD[@]}"; do cmd+=("${a//"$dry_dir"/$d}"); done
    now; local t0=$NOW
    "${cmd[@]}" < /dev/null > "$d/out" 2> "$d/err" &
    pid=$!; BG_PIDS+=("$pid")
    wait_ready "$d/out" "$pid" fg "$d/err"
    T=$((READY - t0))
    wait_exit "$pid" 60 "raw QEMU"
}
run_tern_run() {
    local d=$work/run/$1 pid
    mkdir -p "$d"
    now; local t0=$NOW
    "$TERN" run "${RUN_ARGS[@]}" < /dev/null > "$d/out" 2> "$d/err" &
    pid=$!; BG_PIDS+=("$pid")
    wait_ready "$d/out" "$pid" fg "$d/err"
    T=$((READY - t0))
    wait_exit "$pid" 60 "tern run"
}
run_tern_start() {
    local d=$work/start/$1 pid qpid
    mkdir -p "$d"
    rm -f "$TERN_LOG"   # VM is shut off: start from an empty console log
    now; local t0=$NOW
    "$TERN" start tern-bench > "$d/out" 2> "$d/err" &
    pid=$!; BG_PIDS+=("$pid")
    wait_ready "$TERN_LOG" "$pid" bg "$d/err"
    T=$((READY - t0))
    wait_exit "$pid" 30 "tern start"
    [[ $LAUNCH_RC == 0 || -z $LAUNCH_RC ]] || die "tern start exited with $LAUNCH_RC: $(cat "$d/err")"
    qpid=$(tern_pid tern-bench); [[ -n $qpid ]] && QEMU_PIDS+=("$qpid")
    "$TERN" destroy tern-bench > /dev/null 2>&1   # fails when the guest already powered off
    until_ok 30 "ternd's VM to be shut off" tern_is_off tern-bench
}
lv_gone() { ! timeout 15 "${VIRSH[@]}" domid "$LV_NAME" >/dev/null 2>&1; }
run_virsh() {
    local d=$work/lv/$1 pid
    mkdir -p "$d" && chmod 0755 "$d"
    libvirt_xml "$LV_NAME" "$CMDLINE_FLAGS" "$d/console.log" > "$d/domain.xml"
    now; local t0=$NOW
    "${VIRSH[@]}" create "$d/domain.xml" > "$d/out" 2> "$d/err" &
    pid=$!; BG_PIDS+=("$pid")
    wait_ready "$d/console.log" "$pid" bg "$d/err"
    T=$((READY - t0))
    wait_exit "$pid" 30 "virsh create"
    [[ $LAUNCH_RC == 0 || -z $LAUNCH_RC ]] || die "virsh create exited with $LAUNCH_RC: $(cat "$d/err")"
    timeout 30 "${VIRSH[@]}" destroy "$LV_NAME" > /dev/null 2>&1   # fails when already gone
    until_ok 30 "libvirt's domain to go away" lv_gone
}

METHODS=(raw run start virsh)
declare -A LABEL=([raw]="raw QEMU (dry-run cmd)" [run]="tern run" [start]="tern start (ternd)" [virsh]="virsh create (libvirt)")
declare -A TIMES=()
ms() { awk -v us="$1" 'BEGIN { printf "%.1f", us / 1000 }'; }

log "guest CPU: $CPU (libvirt: ${LV_CPU})"
log "tern binaries: $TERN_BIN; $RUNS timed run(s) after $WARMUP warm-up run(s); marker: '$MARKER'"
total=$((WARMUP + RUNS))
for ((i = 1; i <= total; i++)); do
    declare -A this=()
    # rotate the order every iteration so no method always runs right after another's teardown
    for ((k = 0; k < ${#METHODS[@]}; k++)); do
        m=${METHODS[(k + i) % ${#METHODS[@]}]}
        nap "$SETTLE"
        case $m in raw) run_raw "$i" ;; run) run_tern_run "$i" ;; start) run_tern_start "$i" ;; virsh) run_virsh "$i" ;; esac
        this[$m]=$T
        ((i > WARMUP)) && TIMES[$m]+="$T "
    done
    line=""
    for m in "${METHODS[@]}"; do line+=" $m=$(ms "${this[$m]}")ms"; done
    if ((i > WARMUP)); then log "run $((i - WARMUP))/$RUNS:$line"; else log "warm-up:$line"; fi
done

# ---- memory: each daemon with one VM running (a 'counter' guest that stays up) ---------
log "memory: one idle VM on each daemon"
rm -f "$work/ternd/vms/tern-bench-idle/console.log"
"$TERN" start tern-bench-idle > "$work/idle-start.out" 2> "$work/idle-start.err" &
pid=$!; BG_PIDS+=("$pid")
wait_ready "$work/ternd/vms/tern-bench-idle/console.log" "$pid" bg "$work/idle-start.err"
wait_exit "$pid" 30 "tern start"
qpid=$(tern_pid tern-bench-idle); [[ -n $qpid ]] && QEMU_PIDS+=("$qpid")
nap 1
TERND_RSS=$(rss_kb "$TERND_PID")
TERND_SPLIT=$(mem_split "$TERND_PID")
TERN_QEMU_RSS=$( [[ -n $qpid ]] && rss_kb "$qpid")
"$TERN" destroy tern-bench-idle > /dev/null 2>&1
until_ok 30 "ternd's idle VM to be shut off" tern_is_off tern-bench-idle

mkdir -p "$work/lv/idle" && chmod 0755 "$work/lv/idle"
libvirt_xml "$LV_IDLE" "$CMDLINE_IDLE" "$work/lv/idle/console.log" > "$work/lv/idle/domain.xml"
"${VIRSH[@]}" create "$work/lv/idle/domain.xml" > "$work/lv/idle/out" 2> "$work/lv/idle/err" &
pid=$!; BG_PIDS+=("$pid")
wait_ready "$work/lv/idle/console.log" "$pid" bg "$work/lv/idle/err"
wait_exit "$pid" 30 "virsh create"
nap 1
LIBVIRTD_RSS=$(rss_kb "$LIBVIRTD_PID")
LIBVIRTD_SPLIT=$(mem_split "$LIBVIRTD_PID")
VIRTLOGD_PID=$(pidfile_pid /run/virtlogd.pid || pgrep -o -x virtlogd)
VIRTLOGD_RSS=$( [[ -n $VIRTLOGD_PID ]] && rss_kb "$VIRTLOGD_PID")
lv_qpid=$(pidfile_pid "/run/libvirt/qemu/$LV_IDLE.pid")
LV_QEMU_RSS=$( [[ -n $lv_qpid ]] && rss_kb "$lv_qpid")
timeout 30 "${VIRSH[@]}" destroy "$LV_IDLE" > /dev/null 2>&1
[[ -n $TERND_RSS && -n $LIBVIRTD_RSS ]] || die "could not read VmRSS of ternd ($TERND_PID) or libvirtd ($LIBVIRTD_PID)"

# ---- report ----------------------------------------------------------------------------
# stats "µs µs ...": prints "median min" in µs
stats() { tr ' ' '\n' <<< "$1" | grep . | sort -n | awk '{ v[NR] = $1 } END { m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2; printf "%d %d\n", m, v[1] }'; }
declare -A MED=() MIN=()
for m in "${METHODS[@]}"; do read -r "MED[$m]" "MIN[$m]" <<< "$(stats "${TIMES[$m]}")"; done

echo
echo "VM start to '$MARKER' (TCG, 1 vCPU, 256 MiB, cpu $CPU; $RUNS runs, interleaved; tern from $TERN_BIN)"
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) CPU(s) (TCG boot times follow host load)"
printf '%-26s %12s %10s %18s %16s\n' method "median ms" "min ms" "median - raw ms" "min - raw ms"
for m in "${METHODS[@]}"; do
    if [[ $m == raw ]]; then dmed="-"; dmin="-"
    else dmed=$(awk -v a="${MED[$m]}" -v b="${MED[raw]}" 'BEGIN { printf "%+.1f", (a - b) / 1000 }')
         dmin=$(awk -v a="${MIN[$m]}" -v b="${MIN[raw]}" 'BEGIN { printf "%+.1f", (a - b) / 1000 }'); fi
    printf '%-26s %12s %10s %18s %16s\n' "${LABEL[$m]}" "$(ms "${MED[$m]}")" "$(ms "${MIN[$m]}")" "$dmed" "$dmin"
done
awk -v v="${MED[virsh]}" -v s="${MED[start]}" -v r="${MED[raw]}" 'BEGIN {
    printf "ratio virsh/tern-start (median time to ready): %.3fx", v / s
    if (s - r > 0 && v - r > 0) printf "; overhead over raw QEMU: %.1fx", (v - r) / (s - r)
    printf "\n" }'
echo
echo "Resident memory (VmRSS), each daemon with one VM running:"
printf '  %-34s %8.1f MiB\n' "ternd (pid $TERND_PID)" "$(awk -v k="$TERND_RSS" 'BEGIN { print k / 1024 }')"
printf '  %-34s %8.1f MiB\n' "libvirtd (pid $LIBVIRTD_PID)" "$(awk -v k="$LIBVIRTD_RSS" 'BEGIN { print k / 1024 }')"
[[ -n $VIRTLOGD_RSS ]] && printf '  %-34s %8.1f MiB  (libvirt also needs it)\n' "virtlogd (pid $VIRTLOGD_PID)" "$(awk -v k="$VIRTLOGD_RSS" 'BEGIN { print k / 1024 }')"
[[ -n $TERN_QEMU_RSS && -n $LV_QEMU_RSS ]] && printf '  %-34s %8.1f / %.1f MiB\n' "QEMU under ternd / under libvirt" \
    "$(awk -v k="$TERN_QEMU_RSS" 'BEGIN { print k / 1024 }')" "$(awk -v k="$LV_QEMU_RSS" 'BEGIN { print k / 1024 }')"
awk -v l="$LIBVIRTD_RSS" -v t="$TERND_RSS" 'BEGIN { printf "ratio libvirtd/ternd: %.2fx\n", l / t }'
echo "  of which (MiB)                     private   file-backed   PSS"
for d in ternd libvirtd; do
    if [[ $d == ternd ]]; then split=$TERND_SPLIT; else split=$LIBVIRTD_SPLIT; fi
    read -r a f p <<< "$split"
    awk -v n="$d" -v a="$a" -v f="$f" -v p="$p" 'BEGIN { printf "  %-34s %7.1f %13.1f %7.1f\n", n, a / 1024, f / 1024, p / 1024 }'
done
echo
verdict() { if [[ $1 == yes ]]; then echo "met"; else echo "NOT met"; fi; }
d_run=$(( (MED[run] - MED[raw]) / 1000 )); d_start=$(( (MED[start] - MED[raw]) / 1000 ))
echo "targets: tern run adds < 50 ms: $(verdict "$( ((d_run < 50)) && echo yes)") (${d_run} ms);" \
     "tern start adds < 50 ms: $(verdict "$( ((d_start < 50)) && echo yes)") (${d_start} ms);" \
     "tern start faster than virsh: $(verdict "$( ((MED[start] < MED[virsh])) && echo yes)");" \
     "ternd smaller than libvirtd: $(verdict "$( ((TERND_RSS < LIBVIRTD_RSS)) && echo yes)")"
