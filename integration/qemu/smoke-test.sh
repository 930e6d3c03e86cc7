#!/bin/sh
# Guest script for run-guest.sh: proves the QEMU guest is a usable cgroup v2 + container host.
# Runs as PID 1's child inside the guest (busybox ash). Start it from the host with
# integration/qemu/run-smoke.sh, never directly on a host: it creates cgroups and mounts.
#
# Checks: cgroup2 controllers (cpu memory pids ...), memory.max OOM-kills a 100M allocation at
# 32M with memory.events oom_kill incremented, pids.max=5 makes the 5th fork fail, cpu.max is
# writable, namespaces + pivot_root + proc + tmpfs, overlayfs, user namespaces, veth, and
# (if run-smoke.sh passed one) a dynamically-linked glibc binary from the host.
set -u

if [ "${BERTH_GUEST:-}" != 1 ]; then
    echo "smoke-test.sh: this is a guest script; run integration/qemu/run-smoke.sh on the host" >&2
    exit 2
fi

PASS=0
FAIL=0
pass() { PASS=$((PASS + 1)); echo "PASS: $*"; }
fail() { FAIL=$((FAIL + 1)); echo "FAIL: $*"; }
check() { # check DESCRIPTION COMMAND...
    desc=$1; shift
    if "$@"; then pass "$desc"; else fail "$desc"; fi
}

CG=/sys/fs/cgroup
echo "kernel: $(uname -r); cpus: $(nproc); mem: $(awk '/MemTotal/ {print $2 " kB"}' /proc/meminfo)"
echo "uptime at test start: $(cut -d' ' -f1 /proc/uptime)s"

# ---- 1. cgroup v2 controllers ----------------------------------------------------------
controllers=$(cat $CG/cgroup.controllers)
subtree=$(cat $CG/cgroup.subtree_control)
echo "cgroup.controllers: $controllers"
echo "cgroup.subtree_control: $subtree"
for c in cpu memory pids io cpuset; do
    case " $subtree " in
        *" $c "*) pass "controller $c enabled for children" ;;
        *) fail "controller $c missing from cgroup.subtree_control" ;;
    esac
done
check "cgroup2 is mounted at $CG" grep -q "^cgroup2 $CG cgroup2" /proc/mounts

# ---- 2. memory.max=32M OOM-kills a 100M allocation --------------------------------------
M=$CG/smoke-mem
mkdir $M
echo 32M >$M/memory.max
[ -f $M/memory.swap.max ] && echo 0 >$M/memory.swap.max
echo "memory.max: $(cat $M/memory.max)"
oom_before=$(awk '$1 == "oom_kill" {print $2}' $M/memory.events)
# Small allocation first: must succeed under the limit.
sh -c "echo \$\$ >$M/cgroup.procs && exec dd if=/dev/zero of=/dev/null bs=8M count=1" 2>/dev/null
check "8M allocation succeeds under memory.max=32M" [ $? -eq 0 ]
# busybox dd mallocs one bs-sized buffer and read(2) fills it: 100M of anonymous memory.
sh -c "echo \$\$ >$M/cgroup.procs && exec dd if=/dev/zero of=/dev/null bs=100M count=1" 2>/dev/null
rc=$?
oom_after=$(awk '$1 == "oom_kill" {print $2}' $M/memory.events)
echo "100M dd exit status: $rc (137 = SIGKILL); memory.events: $(tr '\n' ' ' <$M/memory.events)"
echo "memory.peak: $(cat $M/memory.peak 2>/dev/null || echo n/a); memory.max: $(cat $M/memory.max)"
check "100M allocation is SIGKILLed under memory.max=32M" [ "$rc" -eq 137 ]
check "memory.events oom_kill incremented ($oom_before -> $oom_after)" [ "$oom_after" -gt "$oom_before" ]
rmdir $M || fail "rmdir $M"

# ---- 3. pids.max=5 makes forks fail ------------------------------------------------------
P=$CG/smoke-pids
mkdir $P
echo 5 >$P/pids.max
# The inner shell counts 1 task; each background sleep another. Forks 1-4 must succeed and the
# 5th must fail (ash exits with "can't fork" when fork(2) returns EAGAIN).
sh -c "echo \$\$ >$P/cgroup.procs; i=0; while [ \$i -lt 10 ]; do sleep 600 & i=\$((i + 1)); echo \$i >/tmp/forked; done" \
    2>/tmp/pids.err
rc=$?
forked=$(cat /tmp/forked 2>/dev/null || echo 0)
pids_max_events=$(awk '$1 == "max" {print $2}' $P/pids.events)
echo "forks that succeeded: $forked; shell status $rc; stderr: $(cat /tmp/pids.err)"
echo "pids.current: $(cat $P/pids.current); pids.events max: $pids_max_events"
check "pids.max=5: exactly 4 children forked (5 tasks)" [ "$forked" -eq 4 ]
check "pids.max=5: the next fork failed" [ "$rc" -ne 0 ]
check "pids.events max > 0" [ "${pids_max_events:-0}" -gt 0 ]
echo 1 >$P/cgroup.kill
i=0
while [ -n "$(cat $P/cgroup.procs)" ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
rmdir $P || fail "rmdir $P"

# ---- 4. cpu.max --------------------------------------------------------------------------
C=$CG/smoke-cpu
mkdir $C
echo "50000 100000" >$C/cpu.max
check "cpu.max is writable (reads back '$(cat $C/cpu.max)')" [ "$(cat $C/cpu.max)" = "50000 100000" ]
rmdir $C

# ---- 5. container primitives: namespaces, pivot_root, proc, tmpfs ------------------------
R=/tmp/ctr/rootfs
mkdir -p $R
mount -t tmpfs -o size=16m ctr-root $R
mkdir -p $R/bin $R/proc $R/oldroot $R/tmp
cp /bin/busybox $R/bin/busybox
out=$(unshare -m -p -f -u -i -n sh -c "
    set -e
    mount --make-rprivate /
    cd $R
    pivot_root . oldroot
    exec /bin/busybox sh -c '
        set -e
        /bin/busybox mount -t proc proc /proc
        /bin/busybox umount -l /oldroot
        /bin/busybox hostname ctr
        /bin/busybox mount -t tmpfs tmpfs /tmp
        echo pid=\$\$ host=\$(/bin/busybox hostname) oldroot=\$(/bin/busybox ls /oldroot | /bin/busybox wc -l) \
             init=\$(/bin/busybox cat /proc/1/comm)
    '
" 2>&1)
echo "container: $out"
check "unshare + pivot_root + proc: PID 1 in new pid ns, own hostname, old root gone" \
    [ "$out" = "pid=1 host=ctr oldroot=0 init=busybox" ]
check "guest hostname unchanged" [ "$(hostname)" = berth-guest ]
umount $R

# ---- 6. overlayfs ------------------------------------------------------------------------
O=/tmp/ovl
mkdir -p $O/lower $O/upper $O/work $O/merged
echo lower >$O/lower/file
if mount -t overlay overlay -o lowerdir=$O/lower,upperdir=$O/upper,workdir=$O/work $O/merged; then
    echo changed >$O/merged/file
    check "overlayfs copy-up (upper=changed, lower=lower)" \
        [ "$(cat $O/upper/file)-$(cat $O/lower/file)" = changed-lower ]
    umount $O/merged
else
    fail "mount -t overlay"
fi

# ---- 7. user namespace, veth -------------------------------------------------------------
check "user namespace maps root" [ "$(unshare -U -r id -u 2>&1)" = 0 ]
if ip link add smoke0 type veth peer name smoke1 2>/tmp/veth.err; then
    pass "veth pair created"
    ip link del smoke0
else
    fail "veth pair: $(cat /tmp/veth.err)"
fi

# ---- 8. host glibc binary copied by --bin ------------------------------------------------
if [ -n "${SMOKE_DYN_BIN:-}" ]; then
    bin=/usr/local/bin/$SMOKE_DYN_BIN
    check "dynamically-linked host binary $SMOKE_DYN_BIN runs in the guest" "$bin" --version
fi

echo "uptime at test end: $(cut -d' ' -f1 /proc/uptime)s"
echo "smoke-test: $PASS passed, $FAIL failed"
[ "$FAIL" -eq 0 ]
