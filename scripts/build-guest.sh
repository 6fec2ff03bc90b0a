#!/bin/sh
# Build Tern's tiny test guest: Debian's cloud kernel + a busybox initramfs.
#
# Usage: scripts/build-guest.sh [OUTDIR]     (default: <repo>/.build-guest)
# Produces OUTDIR/vmlinuz and OUTDIR/initramfs.cpio.gz, rebuilt only when the
# kernel, busybox or this script changed. Prints the two paths at the end.
# Needs: linux-image-cloud-amd64, busybox-static, cpio, gzip
# (scripts/install-deps.sh). No root needed, only read access to /boot/vmlinuz-*.
#
# The guest contract (tern.mode=, marker lines) is documented in scripts/README.md.
set -eu

SCRIPT_DIR=$(cd "$(dirname "$0")" && pwd)
REPO_ROOT=$(cd "$SCRIPT_DIR/.." && pwd)
OUTDIR=${1:-$REPO_ROOT/.build-guest}

die() { echo "build-guest: $*" >&2; exit 1; }

# --- inputs ---------------------------------------------------------------
KERNEL=$(ls /boot/vmlinuz-*-cloud-amd64 2>/dev/null | sort -V | tail -n 1 || true)
[ -n "$KERNEL" ] || die "no /boot/vmlinuz-*-cloud-amd64 (install linux-image-cloud-amd64; see scripts/install-deps.sh)"
[ -r "$KERNEL" ] || die "$KERNEL is not readable (try: sudo chmod 0644 $KERNEL)"

BUSYBOX=/bin/busybox
[ -x "$BUSYBOX" ] || die "$BUSYBOX missing (install busybox-static)"
if command -v ldd >/dev/null 2>&1 && ldd "$BUSYBOX" 2>/dev/null | grep -q '=>'; then
    die "$BUSYBOX is dynamically linked (install busybox-static)"
fi
command -v cpio >/dev/null 2>&1 || die "cpio missing"
command -v gzip >/dev/null 2>&1 || die "gzip missing"

BUSYBOX_VERSION=$("$BUSYBOX" 2>&1 | head -n 1 || true)
SCRIPT_HASH=$(sha256sum "$0" | cut -d' ' -f1)
KERNEL_ID=$(stat -c '%s %Y' "$KERNEL")
BUSYBOX_ID=$(stat -c '%s %Y' "$BUSYBOX")

STAMP_CONTENT="kernel=$KERNEL $KERNEL_ID
busybox=$BUSYBOX_VERSION $BUSYBOX_ID
script=$SCRIPT_HASH"

mkdir -p "$OUTDIR"
OUTDIR=$(cd "$OUTDIR" && pwd)
STAMP=$OUTDIR/.stamp

if [ -f "$STAMP" ] && [ -f "$OUTDIR/vmlinuz" ] && [ -f "$OUTDIR/initramfs.cpio.gz" ] \
    && [ "$(cat "$STAMP")" = "$STAMP_CONTENT" ]; then
    echo "build-guest: up to date" >&2
    echo "$OUTDIR/vmlinuz"
    echo "$OUTDIR/initramfs.cpio.gz"
    exit 0
fi

echo "build-guest: building from $KERNEL" >&2
WORK=$(mktemp -d "${TMPDIR:-/tmp}/tern-guest.XXXXXX")
trap 'rm -rf "$WORK"' EXIT INT TERM

# --- root filesystem ------------------------------------------------------
ROOT=$WORK/root
mkdir -p "$ROOT/bin" "$ROOT/sbin" "$ROOT/usr/bin" "$ROOT/usr/sbin" \
    "$ROOT/proc" "$ROOT/sys" "$ROOT/dev" "$ROOT/tmp" "$ROOT/mnt" "$ROOT/root" "$ROOT/etc"
cp "$BUSYBOX" "$ROOT/bin/busybox"
chmod 0755 "$ROOT/bin/busybox"
# Applet symlinks (bin/sh, sbin/poweroff, ...), all pointing at /bin/busybox.
"$BUSYBOX" --list-full | while read -r applet; do
    [ "$applet" = "bin/busybox" ] && continue
    [ -e "$ROOT/$applet" ] || [ -L "$ROOT/$applet" ] || ln -s /bin/busybox "$ROOT/$applet"
done
chmod 1777 "$ROOT/tmp"
# Drivers the cloud kernel builds as modules, loaded by init in this order (a module after the
# ones it needs): pvpanic, so a panicking guest tells the hypervisor (QEMU's GUEST_PANICKED
# event) instead of only printing to its console; the virtio balloon (with virtio PCI under it),
# so the guest reports its free memory and Tern's VMs give it back to the host.
MODULES="pvpanic pvpanic-mmio pvpanic-pci virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci virtio_balloon"
KVER=${KERNEL#/boot/vmlinuz-}
mkdir -p "$ROOT/lib/modules"
for module in $MODULES; do
    found=$(find "/lib/modules/$KVER/kernel/drivers/misc/pvpanic" "/lib/modules/$KVER/kernel/drivers/virtio" \
        -name "$module.ko*" 2>/dev/null | head -n 1)
    [ -n "$found" ] || continue
    echo "$module" >> "$ROOT/lib/modules/order"
    case "$found" in
        *.xz) xz -dc "$found" > "$ROOT/lib/modules/$module.ko" ;;
        *.zst) zstd -qdc "$found" > "$ROOT/lib/modules/$module.ko" ;;
        *) cp "$found" "$ROOT/lib/modules/$module.ko" ;;
    esac
done

cat > "$ROOT/init" <<'INIT'
#!/bin/sh
# Tern test guest init. Contract: scripts/README.md. Every marker line starts
# with "TERN-GUEST: " and is written with one echo to the serial console.
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null || true
# The archive carries /dev/console, but it is hidden by devtmpfs: reopen it.
exec </dev/console >/dev/console 2>&1
for module in $(cat /lib/modules/order 2>/dev/null); do
    insmod /lib/modules/$module.ko 2>/dev/null
done

say() { echo "TERN-GUEST: $*"; }
# Wait until everything written to the console has left the UART, so that
# nothing is lost when we power off or panic right after.
drain() { stty -F /dev/console onlcr 2>/dev/null || sleep 0.2; }
off() { drain; poweroff -f; sleep 5; echo o > /proc/sysrq-trigger; }

# Firmware output (SeaBIOS) does not end with a newline: start a fresh line.
echo
say "booted"

MODE=flags
DIRTY_MB=64
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        tern.mode=*) MODE=${arg#tern.mode=} ;;
        tern.dirty_mb=*) DIRTY_MB=${arg#tern.dirty_mb=} ;;
    esac
done
case "$DIRTY_MB" in ''|*[!0-9]*) DIRTY_MB=64 ;; esac

say "ready"
say "mode=$MODE"

counter() {
    n=0
    while :; do
        n=$((n + 1))
        say "counter $n"
        usleep 100000
    done
}

field() { # first "<name> : value" line of /proc/cpuinfo (cpu0)
    sed -n "s/^$1[[:space:]]*: *//p" /proc/cpuinfo | head -n 1
}

case "$MODE" in
flags)
    say "cpus=$(grep -c '^processor' /proc/cpuinfo)"
    say "flags=$(field flags)"
    say "vendor=$(field vendor_id)"
    say "model=$(field 'model name')"
    say "clflush=$(field 'clflush size')"
    say "done"
    off
    ;;
counter)
    # The flags first: what the guest saw at boot is what it keeps, wherever it moves.
    say "flags=$(field flags)"
    counter
    ;;
panic)
    say "panicking"
    drain
    echo 1 > /proc/sys/kernel/sysrq
    echo c > /proc/sysrq-trigger
    ;;
shell)
    say "shell"
    setsid cttyhack sh -l
    say "shell exited"
    off
    ;;
memtouch)
    mkdir -p /mnt/dirty
    mount -t tmpfs -o size=$((DIRTY_MB + 1))m tmpfs /mnt/dirty
    say "memtouch dirty_mb=$DIRTY_MB"
    (
        pass=0
        while :; do
            dd if=/dev/urandom of=/mnt/dirty/buf bs=1M count="$DIRTY_MB" \
                conv=notrunc 2>/dev/null
            pass=$((pass + 1))
            say "memtouch pass $pass"
        done
    ) &
    counter
    ;;
memcheck)
    # Memory that must come through a move intact: random data written once, then copied over
    # and over (dirtying memory like memtouch) and every copy, and the original, checked
    # against the original's first checksum.
    mkdir -p /mnt/dirty
    mount -t tmpfs -o size=$((2 * DIRTY_MB + 1))m tmpfs /mnt/dirty
    dd if=/dev/urandom of=/mnt/dirty/ref bs=1M count="$DIRTY_MB" 2>/dev/null
    want=$(md5sum </mnt/dirty/ref)
    say "memcheck dirty_mb=$DIRTY_MB"
    (
        pass=0
        while :; do
            cp /mnt/dirty/ref /mnt/dirty/copy
            pass=$((pass + 1))
            if [ "$(md5sum </mnt/dirty/copy)" = "$want" ] && [ "$(md5sum </mnt/dirty/ref)" = "$want" ]; then
                say "memcheck pass $pass ok"
            else
                say "memcheck pass $pass MISMATCH"
            fi
        done
    ) &
    counter
    ;;
*)
    say "error unknown mode $MODE"
    off
    ;;
esac
# Never let init exit (that would panic the kernel).
off
INIT
chmod 0755 "$ROOT/init"

# --- archive --------------------------------------------------------------
# /dev/console must exist when the kernel starts init, or init gets no stdio.
# Creating a device node needs root, so write that newc entry by hand (the
# format is ASCII) and concatenate it with the cpio archive; the kernel accepts
# concatenated archives.
newc_entry() { # name mode(octal) rdevmajor rdevminor
    printf '070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X' \
        0 "$((0$2))" 0 0 1 0 0 0 0 "$3" "$4" "$((${#1} + 1))" 0
    printf '%s\0' "$1"
    # header (110 bytes) + name + NUL padded to a multiple of 4
    pad=$(( (4 - (110 + ${#1} + 1) % 4) % 4 ))
    [ "$pad" -gt 0 ] && head -c "$pad" /dev/zero
    return 0
}
{
    newc_entry dev 040755 0 0
    newc_entry dev/console 020600 5 1
    newc_entry TRAILER!!! 0 0 0
    (cd "$ROOT" && find . -mindepth 1 | sed 's|^\./||' | LC_ALL=C sort \
        | cpio --quiet -o -H newc -R 0:0 --reproducible)
} | gzip -9 -n > "$WORK/initramfs.cpio.gz"

cp "$KERNEL" "$WORK/vmlinuz"
mv -f "$WORK/vmlinuz" "$OUTDIR/vmlinuz"
mv -f "$WORK/initramfs.cpio.gz" "$OUTDIR/initramfs.cpio.gz"
printf '%s\n' "$STAMP_CONTENT" > "$STAMP"

echo "$OUTDIR/vmlinuz"
echo "$OUTDIR/initramfs.cpio.gz"
