#!/usr/bin/env bash
# Boot a throw-away QEMU guest (Debian 6.1 kernel, busybox initramfs, pure cgroup v2) and
# run one shell script in it as root. See integration/qemu/README.md.
#
# Usage:
#   run-guest.sh --out DIR [options] -- GUEST_SCRIPT
#
# Options:
#   --out DIR          host directory shared into the guest at /results (virtio-9p);
#                      created if missing. Receives guest.log, exit-code, console.log,
#                      timing, and anything the guest script writes under /results.
#   --bin PATH         copy an executable to /usr/local/bin/<basename> in the guest, with every
#                      shared library `ldd` reports (at the same paths, loader included).
#                      Repeatable.
#   --file SRC:DEST    copy a host file to the absolute guest path DEST (DEST ending in '/'
#                      means "into that directory"). Repeatable.
#   --dir SRC:DEST     copy a host directory's contents to the guest directory DEST (cp -a).
#                      Repeatable.
#   --module NAME      load an extra kernel module (and its dependencies) in the guest.
#                      Repeatable. Builtin modules are accepted and skipped.
#   --env NAME=VALUE   export a variable to the guest script. Repeatable.
#   --mem SIZE         guest memory (QEMU -m syntax), default 1024M
#   --smp N            guest CPUs, default 2 (capped at the host's CPU count)
#   --timeout SECONDS  wall-clock limit for the whole VM run, default 300
#   --append ARGS      extra kernel command-line arguments
#   --verbose          stream the serial console to stderr while the guest runs
#   -h, --help         show this help
#
# Exit status: the guest script's exit status when the guest wrote one. Otherwise
#   124  the VM hit --timeout before the script finished
#   125  the VM stopped without an exit status (kernel panic, /init failure, QEMU error)
#   2    usage error on the host side
# The message on stderr says which; $OUT/exit-code exists only if the script finished.
#
# Environment: BERTH_QEMU_CACHE (kernel cache, see prepare.sh), BERTH_QEMU_KEEP=1 (keep the
# temporary initramfs build directory and print its path), BERTH_QEMU_TSC_KHZ (guest TSC
# frequency; default: the host's, from dmesg or /proc/cpuinfo), BERTH_QEMU_MACHINE (QEMU -M
# value, default microvm,pit=off,pic=off).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PROG=run-guest.sh
log() { printf '%s: %s\n' "$PROG" "$*" >&2; }
die() { printf '%s: error: %s\n' "$PROG" "$1" >&2; exit "${2:-125}"; }
usage_err() { printf '%s: usage error: %s\n(see %s --help)\n' "$PROG" "$*" "$0" >&2; exit 2; }

OUT=""
BINS=()
FILES=()
DIRS=()
EXTRA_MODULES=()
ENVS=()
MEM=1024M
SMP=2
TIMEOUT=300
APPEND=""
VERBOSE=0
SCRIPT=""

need_arg() { [[ $# -ge 2 && -n "$2" ]] || usage_err "$1 needs an argument"; }
while [[ $# -gt 0 ]]; do
    case "$1" in
        --out) need_arg "$@"; OUT=$2; shift ;;
        --bin) need_arg "$@"; BINS+=("$2"); shift ;;
        --file) need_arg "$@"; FILES+=("$2"); shift ;;
        --dir) need_arg "$@"; DIRS+=("$2"); shift ;;
        --module) need_arg "$@"; EXTRA_MODULES+=("$2"); shift ;;
        --env) need_arg "$@"; ENVS+=("$2"); shift ;;
        --mem) need_arg "$@"; MEM=$2; shift ;;
        --smp) need_arg "$@"; SMP=$2; shift ;;
        --timeout) need_arg "$@"; TIMEOUT=$2; shift ;;
        --append) need_arg "$@"; APPEND=$2; shift ;;
        --verbose) VERBOSE=1 ;;
        -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
        --) shift; [[ $# -eq 1 ]] || usage_err "exactly one GUEST_SCRIPT expected after --"; SCRIPT=$1; shift; break ;;
        *) usage_err "unknown argument: $1" ;;
    esac
    shift
done
[[ -n "$OUT" ]] || usage_err "--out DIR is required"
[[ -n "$SCRIPT" ]] || usage_err "missing -- GUEST_SCRIPT"
[[ -f "$SCRIPT" ]] || usage_err "guest script not found: $SCRIPT"
[[ "$TIMEOUT" =~ ^[0-9]+$ && "$TIMEOUT" -gt 0 ]] || usage_err "--timeout must be a positive integer"
[[ "$SMP" =~ ^[0-9]+$ && "$SMP" -gt 0 ]] || usage_err "--smp must be a positive integer"
HOST_CPUS=$(nproc)
[[ "$SMP" -le "$HOST_CPUS" ]] || SMP=$HOST_CPUS
for e in "${ENVS[@]}"; do
    [[ "$e" =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || usage_err "--env expects NAME=VALUE, got: $e"
done

T_START=$(date +%s.%N)

# ---- kernel -------------------------------------------------------------------------
CACHE="${BERTH_QEMU_CACHE:-/var/cache/berth/qemu}"
KDIR=$(readlink -f "$CACHE/current" 2>/dev/null || true)
if [[ -z "$KDIR" || ! -f "$KDIR/.complete" ]] || ! command -v qemu-system-x86_64 >/dev/null \
    || [[ ! -x /bin/busybox ]]; then
    log "kernel cache or host tools missing; running prepare.sh"
    KDIR=$("$HERE/prepare.sh" --print-dir) || die "prepare.sh failed"
fi
VMLINUX="$KDIR/vmlinux"
MODDIR="$KDIR/modules"
[[ -f "$VMLINUX" ]] || die "no vmlinux in $KDIR (run prepare.sh --force)"
BUSYBOX=/bin/busybox
[[ "$(file -b "$BUSYBOX")" == *"statically linked"* ]] || die "$BUSYBOX is not statically linked (install busybox-static)"

mkdir -p "$OUT" || usage_err "cannot create --out directory $OUT"
OUT=$(cd "$OUT" && pwd)
rm -f "$OUT/exit-code" "$OUT/guest.log" "$OUT/console.log" "$OUT/qemu.log" "$OUT/timing"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/berth-qemu.XXXXXX")
QEMU_PID=""
TAIL_PID=""
# shellcheck disable=SC2317 # invoked by trap
cleanup() {
    local rc=$?
    if [[ -n "$TAIL_PID" ]]; then kill "$TAIL_PID" 2>/dev/null || true; fi
    if [[ -n "$QEMU_PID" ]]; then kill "$QEMU_PID" 2>/dev/null || true; fi
    if [[ "${BERTH_QEMU_KEEP:-0}" == 1 ]]; then
        log "kept build directory $WORK"
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT
trap 'log "terminated"; exit 143' TERM HUP

ROOT="$WORK/root"
mkdir -p "$ROOT"/{bin,sbin,usr/bin,usr/sbin,usr/local/bin,lib/modules/berth,etc,proc,sys,dev,tmp,run,root,results,var/tmp}
chmod 1777 "$ROOT/tmp" "$ROOT/var/tmp"

# ---- busybox ------------------------------------------------------------------------
cp "$BUSYBOX" "$ROOT/bin/busybox"
mapfile -t APPLETS < <("$BUSYBOX" --list-full | grep -vxE 'bin/busybox|linuxrc')
(cd "$ROOT" && printf '%s\n' "${APPLETS[@]}" | sed -n 's|/[^/]*$||p' | sort -u | xargs -r mkdir -p)
if command -v perl >/dev/null; then # one process instead of one `ln` per applet (~1 s saved)
    (cd "$ROOT" && perl -e 'for (@ARGV) { symlink("/bin/busybox", $_) or die "symlink $_: $!\n" }' "${APPLETS[@]}") \
        || die "creating busybox applet links failed"
else
    for applet in "${APPLETS[@]}"; do ln -s /bin/busybox "$ROOT/$applet"; done
fi

# ---- modules (dependency closure, load order = dependencies first) -------------------
DEFAULT_MODULES=(virtio_ring virtio virtio_mmio netfs fscache 9pnet 9pnet_virtio 9p virtio_rng
                 overlay veth bridge dummy loop tun)
declare -A MOD_SEEN=()
MOD_ORDER=()
mod_path() { awk -v m="$1" '$1 == m { print $2; exit }' "$KDIR/modules.index"; }
is_builtin() {
    [[ -f "$MODDIR/modules.builtin" ]] &&
        sed 's|.*/||; s|\.ko$||; s|-|_|g' "$MODDIR/modules.builtin" | grep -qx "$1"
}
resolve_module() {
    local m=${1//-/_} path deps d
    [[ -z "${MOD_SEEN[$m]:-}" ]] || return 0
    MOD_SEEN[$m]=1
    path=$(mod_path "$m")
    if [[ -z "$path" ]]; then
        is_builtin "$m" && return 0
        die "kernel module '$m' is neither in $MODDIR nor builtin"
    fi
    deps=$(LC_ALL=C tr '\0' '\n' <"$MODDIR/$path" | awk -F= '$1 == "depends" && !done { print $2; done = 1 }')
    for d in ${deps//,/ }; do resolve_module "$d"; done
    MOD_ORDER+=("$m")
    cp "$MODDIR/$path" "$ROOT/lib/modules/berth/$m.ko"
}
for m in "${DEFAULT_MODULES[@]}" "${EXTRA_MODULES[@]}"; do resolve_module "$m"; done
printf '%s\n' "${MOD_ORDER[@]}" >"$ROOT/lib/modules/berth/load-order"

# ---- binaries and their libraries -----------------------------------------------------
copy_path() { # copy a host file to the same absolute path in the guest (dereferencing links)
    local p=$1
    [[ -e "$ROOT$p" ]] && return 0
    mkdir -p "$ROOT$(dirname "$p")"
    cp -L "$p" "$ROOT$p"
}
for b in "${BINS[@]}"; do
    [[ -f "$b" && -x "$b" ]] || usage_err "--bin $b: not an executable file"
    cp -L "$b" "$ROOT/usr/local/bin/$(basename "$b")"
    chmod 755 "$ROOT/usr/local/bin/$(basename "$b")"
    if ldd_out=$(LC_ALL=C ldd "$b" 2>&1); then
        while read -r line; do
            case "$line" in
                *"=> not found"*) die "--bin $b: missing shared library: $line" 2 ;;
                *linux-vdso.so*|*linux-gate.so*) ;;
                *" => /"*) lib=${line#* => }; copy_path "${lib%% (*}" ;;
                /*) copy_path "${line%% (*}" ;;
                *"=> "*) ;; # e.g. "libc.so.6 => (0x...)"
                *) log "warning: --bin $b: ignoring ldd line: $line" ;;
            esac
        done <<<"$ldd_out"
    elif [[ "$ldd_out" != *"not a dynamic executable"* && "$ldd_out" != *"statically linked"* ]]; then
        die "--bin $b: ldd failed: $ldd_out" 2
    fi
done

# ---- extra files and directories --------------------------------------------------------
split_spec() { # SRC:DEST, split at the last ':'
    SPEC_SRC=${1%:*}
    SPEC_DEST=${1##*:}
    [[ "$1" == *:* && -n "$SPEC_SRC" && "$SPEC_DEST" == /* ]] || usage_err "expected SRC:/ABS/DEST, got: $1"
}
for f in "${FILES[@]}"; do
    split_spec "$f"
    [[ -f "$SPEC_SRC" ]] || usage_err "--file $f: $SPEC_SRC is not a file"
    if [[ "$SPEC_DEST" == */ ]]; then
        mkdir -p "$ROOT$SPEC_DEST"
    else
        mkdir -p "$ROOT$(dirname "$SPEC_DEST")"
    fi
    cp -L --preserve=mode,timestamps "$SPEC_SRC" "$ROOT$SPEC_DEST"
done
for d in "${DIRS[@]}"; do
    split_spec "$d"
    [[ -d "$SPEC_SRC" ]] || usage_err "--dir $d: $SPEC_SRC is not a directory"
    mkdir -p "$ROOT$SPEC_DEST"
    cp -a "$SPEC_SRC/." "$ROOT$SPEC_DEST/"
done

# ---- /etc, test script, environment, /init ----------------------------------------------
cat >"$ROOT/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
EOF
cat >"$ROOT/etc/group" <<'EOF'
root:x:0:
nogroup:x:65534:
EOF
echo berth-guest >"$ROOT/etc/hostname"
printf '127.0.0.1 localhost berth-guest\n::1 localhost\n' >"$ROOT/etc/hosts"
: >"$ROOT/etc/fstab"

cp "$SCRIPT" "$ROOT/test.sh"
chmod 755 "$ROOT/test.sh"
{
    for e in "${ENVS[@]}"; do
        v=${e#*=}
        printf "export %s='%s'\n" "${e%%=*}" "${v//\'/\'\\\'\'}"  # POSIX single quoting for ash
    done
} >"$ROOT/etc/berth-test.env"

cat >"$ROOT/init" <<'INIT'
#!/bin/sh
# Generated by integration/qemu/run-guest.sh.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root

if [ "$1" != stage2 ]; then
    # The initramfs root ("rootfs") has no parent mount, so pivot_root(2) fails on it.
    # Bind it onto itself and chroot into the bind: the new / is an ordinary mount whose
    # parent is rootfs, and container runtimes can pivot_root away from it.
    mkdir -p /.newroot
    if mount -o bind / /.newroot && cd /.newroot && mount -o move . /; then
        exec chroot . /init stage2
    fi
    echo "init: could not re-root onto a bind mount; pivot_root will fail in this guest" >/dev/console
    cd / || exit 1
fi

rmdir /.newroot 2>/dev/null
mount -t devtmpfs devtmpfs /dev
exec </dev/null >/dev/console 2>&1
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mkdir -p /dev/pts /dev/shm /dev/mqueue
mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts /dev/pts
mount -t tmpfs -o mode=1777,nosuid,nodev shm /dev/shm
mount -t mqueue mqueue /dev/mqueue
mount -t tmpfs -o mode=1777 tmpfs /tmp
mount -t tmpfs -o mode=755 tmpfs /run
mount -t cgroup2 -o nsdelegate cgroup2 /sys/fs/cgroup
for c in $(cat /sys/fs/cgroup/cgroup.controllers); do
    echo "+$c" >/sys/fs/cgroup/cgroup.subtree_control || echo "init: cannot enable cgroup controller $c"
done
mount --make-rshared /
hostname berth-guest
ip link set lo up 2>/dev/null

while read -r m; do
    insmod "/lib/modules/berth/$m.ko" || echo "init: insmod $m failed"
done </lib/modules/berth/load-order

if ! mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 results /results; then
    echo "init: cannot mount the 9p results share; guest output is lost"
    echo "BERTH-GUEST-NO-RESULTS"
    poweroff -f
fi
read -r up _ </proc/uptime
echo "init_uptime=$up" >/results/timing
echo "BERTH-GUEST-INIT uptime=${up}s"

. /etc/berth-test.env
export RESULTS=/results BERTH_GUEST=1
cd /
# Not a plain `/test.sh | tee`: a daemon the script leaves behind (a detached container, a
# shim) may keep the output pipe open, and the pipeline would then wait for it until the
# host's timeout. Wait for the script alone, then give tee a moment to drain.
mkfifo /run/berth-test.out
tee /results/guest.log </run/berth-test.out &
tee_pid=$!
/test.sh </dev/null >/run/berth-test.out 2>&1 &
wait $!
rc=$?
read -r up _ </proc/uptime
i=0
while kill -0 $tee_pid 2>/dev/null && [ $i -lt 20 ]; do sleep 0.1; i=$((i + 1)); done
if kill -0 $tee_pid 2>/dev/null; then
    echo "init: processes left by /test.sh still hold its output open; not waiting for them" | tee -a /results/guest.log
    kill $tee_pid
fi
echo "end_uptime=$up" >>/results/timing
echo "$rc" >/results/exit-code
echo "BERTH-GUEST-EXIT rc=$rc uptime=${up}s"
sync
umount /results
poweroff -f
# Not reached unless poweroff failed: with -no-reboot a reset also ends QEMU.
sleep 5
echo o >/proc/sysrq-trigger
reboot -f
INIT
chmod 755 "$ROOT/init"

INITRD="$WORK/initramfs.cpio"
(cd "$ROOT" && find . -mindepth 1 -print0 | LC_ALL=C sort -z | "$BUSYBOX" cpio -o -H newc -0 -R root:root >"$INITRD" 2>/dev/null) \
    || die "building the initramfs failed"
INITRD_MB=$(( $(stat -c %s "$INITRD") / 1048576 ))
T_BUILT=$(date +%s.%N)

# ---- boot -------------------------------------------------------------------------------
# TSC frequency for the guest. Under TCG the guest's TSC ticks at the host's rate, but the
# guest kernel's PIT-based calibration is timing-sensitive and fails now and then under
# emulation; with no HPET/ACPI PM timer on microvm it then hangs silently before the console
# is up (seen: ~1 boot in 10). So the PIT is switched off (deterministic: calibration fails
# fast) and the frequency is given with tsc_early_khz.
host_tsc_khz() {
    local mhz
    if [[ -n "${BERTH_QEMU_TSC_KHZ:-}" ]]; then echo "$BERTH_QEMU_TSC_KHZ"; return; fi
    mhz=$(dmesg 2>/dev/null | sed -n 's/.*tsc: Refined TSC clocksource calibration: \([0-9.]*\) MHz.*/\1/p' | tail -1)
    [[ -n "$mhz" ]] || mhz=$(dmesg 2>/dev/null | sed -n 's/.*tsc: Detected \([0-9.]*\) MHz.*/\1/p' | tail -1)
    [[ -n "$mhz" ]] || mhz=$(awk -F: '/^cpu MHz/ { gsub(/ /, "", $2); print $2; exit }' /proc/cpuinfo)
    [[ -n "$mhz" ]] || mhz=2000
    awk -v m="$mhz" 'BEGIN { printf "%d", m * 1000 }'
}
TSC_KHZ=$(host_tsc_khz)
[[ "$TSC_KHZ" =~ ^[0-9]+$ && "$TSC_KHZ" -gt 100000 ]] || TSC_KHZ=2000000
CMDLINE="console=ttyS0 quiet loglevel=3 panic=-1 rdinit=/init 8250.nr_uarts=1 random.trust_cpu=on"
CMDLINE="$CMDLINE tsc_early_khz=$TSC_KHZ tsc=reliable"
[[ -n "$APPEND" ]] && CMDLINE="$CMDLINE $APPEND"
# shellcheck disable=SC2054 # commas are QEMU's option syntax
QEMU=(qemu-system-x86_64
    -M "${BERTH_QEMU_MACHINE:-microvm,pit=off,pic=off}" -accel tcg -cpu max -smp "$SMP" -m "$MEM"
    -nodefaults -no-user-config -nographic -no-reboot
    -kernel "$VMLINUX" -initrd "$INITRD" -append "$CMDLINE"
    -chardev "file,id=con,path=$OUT/console.log" -serial chardev:con
    -fsdev "local,id=res,path=$OUT,security_model=none"
    -device virtio-9p-device,fsdev=res,mount_tag=results
    -device virtio-rng-device)
log "booting $(basename "$KDIR") (initramfs ${INITRD_MB} MiB, ${SMP} cpu, $MEM, timeout ${TIMEOUT}s)"
printf '%q ' "${QEMU[@]}" >"$OUT/qemu.cmd"; echo >>"$OUT/qemu.cmd"

: >"$OUT/console.log"
if [[ $VERBOSE -eq 1 ]]; then
    tail -n +1 -F "$OUT/console.log" >&2 2>/dev/null &
    TAIL_PID=$!
fi
timeout -k 10 "$TIMEOUT" "${QEMU[@]}" </dev/null >"$OUT/qemu.log" 2>&1 &
QEMU_PID=$!
set +e
wait "$QEMU_PID"
QEMU_RC=$?
set -e
QEMU_PID=""
T_END=$(date +%s.%N)
if [[ -n "$TAIL_PID" ]]; then
    sleep 0.2
    kill "$TAIL_PID" 2>/dev/null || true
    wait "$TAIL_PID" 2>/dev/null || true
    TAIL_PID=""
fi

# ---- report -------------------------------------------------------------------------------
fmt() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }
init_up=$(sed -n 's/^init_uptime=//p' "$OUT/timing" 2>/dev/null || true)
end_up=$(sed -n 's/^end_uptime=//p' "$OUT/timing" 2>/dev/null || true)
{
    echo "host_build_s=$(fmt "$T_START" "$T_BUILT")"
    echo "host_vm_s=$(fmt "$T_BUILT" "$T_END")"
    echo "host_total_s=$(fmt "$T_START" "$T_END")"
} >>"$OUT/timing"

if [[ -f "$OUT/guest.log" ]]; then
    echo "----- guest.log ($OUT/guest.log) -----"
    cat "$OUT/guest.log"
    echo "----- end of guest.log -----"
fi
summary="initramfs build $(fmt "$T_START" "$T_BUILT")s, VM $(fmt "$T_BUILT" "$T_END")s"
[[ -n "$init_up" ]] && summary="$summary, guest /init at ${init_up}s"
[[ -n "$end_up" ]] && summary="$summary, script done at ${end_up}s (guest uptime)"
log "timing: $summary"

show_console_tail() {
    log "last lines of the serial console ($OUT/console.log):"
    tail -n 40 "$OUT/console.log" | sed 's/^/  | /' >&2 || true
    if [[ -s "$OUT/qemu.log" ]]; then
        log "QEMU output ($OUT/qemu.log):"
        tail -n 20 "$OUT/qemu.log" | sed 's/^/  | /' >&2 || true
    fi
}

if [[ -f "$OUT/exit-code" ]]; then
    GUEST_RC=$(tr -d '[:space:]' <"$OUT/exit-code")
    [[ "$GUEST_RC" =~ ^[0-9]+$ ]] || die "guest wrote a malformed exit code: '$GUEST_RC'"
    if [[ $QEMU_RC -eq 124 || $QEMU_RC -eq 137 ]]; then
        log "warning: the guest finished but the VM did not power off before the timeout"
    elif [[ $QEMU_RC -ne 0 ]]; then
        log "warning: qemu exited with status $QEMU_RC after the guest finished"
    fi
    log "guest script exited with status $GUEST_RC"
    exit "$GUEST_RC"
fi

if [[ $QEMU_RC -eq 124 || $QEMU_RC -eq 137 ]]; then
    show_console_tail
    die "VM timed out after ${TIMEOUT}s before the guest script finished" 124
fi
show_console_tail
if grep -q 'Kernel panic' "$OUT/console.log" 2>/dev/null; then
    die "guest kernel panicked (see $OUT/console.log)"
fi
die "VM stopped (qemu status $QEMU_RC) without the guest writing an exit code"
