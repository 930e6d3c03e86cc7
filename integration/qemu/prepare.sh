#!/usr/bin/env bash
# Fetch and cache a Debian 6.1 kernel (uncompressed vmlinux + its modules) for the
# QEMU cgroup-v2 test guest used by run-guest.sh.
#
# Usage: prepare.sh [--force] [--print-dir]
#
#   --force       re-download and re-extract even if the newest kernel is already cached
#   --print-dir   print only the cached kernel directory on stdout (for scripts)
#
# Environment:
#   BERTH_QEMU_CACHE       cache root (default /var/cache/berth/qemu)
#   BERTH_QEMU_KERNEL_PKG  pin the kernel package (e.g. linux-image-6.1.0-56-amd64-unsigned)
#   BERTH_QEMU_OFFLINE=1   never ask apt: use whatever kernel is cached (fail if none)
#
# Cache layout (all under $BERTH_QEMU_CACHE):
#   current -> <kver>              symlink to the kernel in use
#   <kver>/vmlinux                 uncompressed ELF kernel (booted via PVH on -M microvm)
#   <kver>/modules/                the package's lib/modules/<kver> tree, every .ko decompressed
#   <kver>/modules.index           "<module_name> <path relative to modules/>" for every module
#   <kver>/package                 "<package> <version>" the kernel came from
#   <kver>/.complete               stamp written last; a dir without it is rebuilt
#
# Idempotent: when the newest available package is already cached it only checks apt's
# metadata and exits. Safe to run concurrently (flock on the cache).
set -euo pipefail

log() { printf 'prepare.sh: %s\n' "$*" >&2; }
die() { printf 'prepare.sh: error: %s\n' "$*" >&2; exit 1; }

FORCE=0
PRINT_DIR=0
while [[ $# -gt 0 ]]; do
    case "$1" in
        --force) FORCE=1 ;;
        --print-dir) PRINT_DIR=1 ;;
        -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
        *) die "unknown argument: $1 (see --help)" ;;
    esac
    shift
done

CACHE="${BERTH_QEMU_CACHE:-/var/cache/berth/qemu}"
export DEBIAN_FRONTEND=noninteractive

SUDO=()
if [[ $(id -u) -ne 0 ]]; then
    if command -v sudo >/dev/null 2>&1; then SUDO=(sudo -n); fi
fi

APT_UPDATED=0
apt_update() {
    if [[ $APT_UPDATED -eq 0 ]]; then
        log "running apt-get update"
        "${SUDO[@]}" apt-get update -qq </dev/null >&2 || die "apt-get update failed"
        APT_UPDATED=1
    fi
}

# ---- host tools -------------------------------------------------------------------
ensure_packages() {
    local missing=() pkg
    for pkg in "$@"; do
        if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
            missing+=("$pkg")
        fi
    done
    [[ ${#missing[@]} -eq 0 ]] && return 0
    log "installing missing packages: ${missing[*]}"
    if ! "${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" </dev/null >&2; then
        apt_update
        "${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" </dev/null >&2 \
            || die "apt-get install ${missing[*]} failed"
    fi
}
# xz-utils: vmlinux/.ko.xz; busybox-static: guest userland; qemu-system-x86: the VM;
# file: sanity check of the extracted vmlinux.
ensure_packages xz-utils busybox-static qemu-system-x86 file

mkdir -p "$CACHE" 2>/dev/null || "${SUDO[@]}" mkdir -p "$CACHE" || die "cannot create cache dir $CACHE"
[[ -w "$CACHE" ]] || die "cache dir $CACHE is not writable (set BERTH_QEMU_CACHE)"

exec 9>"$CACHE/.lock"
flock 9

# ---- pick the kernel package ------------------------------------------------------
# Prints "<package> <version>" of the newest linux-image-6.1.0-N-amd64-unsigned that has an
# installation candidate (falls back to the signed linux-image-6.1.0-N-amd64).
pick_package() {
    local names pkg cand flavour
    if [[ -n "${BERTH_QEMU_KERNEL_PKG:-}" ]]; then
        cand=$(apt-cache policy "$BERTH_QEMU_KERNEL_PKG" 2>/dev/null | awk '/Candidate:/ {print $2}')
        [[ -n "$cand" && "$cand" != "(none)" ]] || return 1
        echo "$BERTH_QEMU_KERNEL_PKG $cand"
        return 0
    fi
    names=$(apt-cache pkgnames linux-image-6.1.0- 2>/dev/null || true)
    for flavour in '-unsigned' ''; do
        for pkg in $(grep -E "^linux-image-6\.1\.0-[0-9]+-amd64${flavour}\$" <<<"$names" | sort -V -r); do
            cand=$(apt-cache policy "$pkg" 2>/dev/null | awk '/Candidate:/ {print $2}')
            if [[ -n "$cand" && "$cand" != "(none)" ]]; then
                echo "$pkg $cand"
                return 0
            fi
        done
    done
    return 1
}

cached_dir() {
    local d
    d=$(readlink -f "$CACHE/current" 2>/dev/null) || return 1
    [[ -f "$d/.complete" && -f "$d/vmlinux" ]] || return 1
    echo "$d"
}

finish() {
    local dir="$1"
    if [[ $PRINT_DIR -eq 1 ]]; then
        echo "$dir"
    else
        log "kernel ready: $dir ($(cat "$dir/package"))"
        log "  vmlinux: $dir/vmlinux"
    fi
    exit 0
}

if [[ "${BERTH_QEMU_OFFLINE:-0}" == 1 ]]; then
    dir=$(cached_dir) || die "BERTH_QEMU_OFFLINE=1 but no kernel is cached in $CACHE"
    finish "$dir"
fi

choice=$(pick_package) || { apt_update; choice=$(pick_package); } || {
    if dir=$(cached_dir); then
        log "warning: apt knows no linux-image-6.1.0-*-amd64 package; using cached kernel"
        finish "$dir"
    fi
    die "no linux-image-6.1.0-*-amd64 package found by apt-cache (even after apt-get update)"
}
read -r PKG PKGVER <<<"$choice"

if [[ $FORCE -eq 0 ]] && dir=$(cached_dir) && [[ "$(cat "$dir/package" 2>/dev/null)" == "$PKG $PKGVER" ]]; then
    finish "$dir"
fi

# ---- download and extract ---------------------------------------------------------
WORK=$(mktemp -d "$CACHE/.work.XXXXXX")
cleanup() { rm -rf "$WORK"; }
trap cleanup EXIT

download() {
    (cd "$WORK" && rm -f ./*.deb && apt-get download -qq "$PKG=$PKGVER" </dev/null >&2 2>"$WORK/download.err") \
        && compgen -G "$WORK/*.deb" >/dev/null
}
log "downloading $PKG $PKGVER"
# apt-get download runs as root without sandbox here; that warning is harmless.
chmod 755 "$WORK" || true
if ! download; then
    # Stale lists: Debian drops superseded kernel ABIs, so re-read the lists and re-pick.
    apt_update
    choice=$(pick_package) || die "no linux-image-6.1.0-*-amd64 package after apt-get update"
    read -r PKG PKGVER <<<"$choice"
    log "retrying download of $PKG $PKGVER"
    download || die "apt-get download $PKG=$PKGVER failed: $(grep -v '^W:' "$WORK/download.err" | tail -3)"
fi
DEB=$(compgen -G "$WORK/*.deb" | head -1)

log "unpacking $(basename "$DEB")"
mkdir "$WORK/x"
dpkg-deb -x "$DEB" "$WORK/x" || die "dpkg-deb -x $DEB failed"
rm -f "$DEB"

VMLINUZ=$(compgen -G "$WORK/x/boot/vmlinuz-*" | head -1) || true
[[ -n "$VMLINUZ" && -f "$VMLINUZ" ]] || die "no boot/vmlinuz-* in $PKG"
KVER=${VMLINUZ##*/vmlinuz-}
[[ -d "$WORK/x/lib/modules/$KVER" ]] || die "no lib/modules/$KVER in $PKG"

# The bzImage carries an xz-compressed ELF vmlinux; try each xz magic offset until one
# decompresses to an ELF (the first one normally does).
log "extracting vmlinux from $(basename "$VMLINUZ")"
found=0
for off in $(LC_ALL=C grep -obUaP '\xfd7zXZ\x00' "$VMLINUZ" | cut -d: -f1); do
    # xz stops at the end of the first stream, so tail may die of SIGPIPE: judge xz alone.
    { tail -c "+$((off + 1))" "$VMLINUZ" || true; } | xz -dc --single-stream >"$WORK/vmlinux" 2>/dev/null || continue
    if [[ "$(file -b "$WORK/vmlinux")" == "ELF 64-bit"*executable* ]]; then
        found=1
        break
    fi
done
[[ $found -eq 1 ]] || die "could not find an xz-compressed ELF vmlinux inside $VMLINUZ ($(file -b "$VMLINUZ"))"
log "vmlinux: $(file -b "$WORK/vmlinux" | cut -c1-80)"

DEST="$WORK/$KVER"
mkdir -p "$DEST"
mv "$WORK/vmlinux" "$DEST/vmlinux"
mv "$WORK/x/lib/modules/$KVER" "$DEST/modules"
cp "$WORK/x/boot/config-$KVER" "$DEST/config" 2>/dev/null || true
rm -rf "$WORK/x"

# Decompress modules (Debian 6.1 ships plain .ko; later kernels ship .ko.xz / .ko.zst).
n_xz=$(find "$DEST/modules" -name '*.ko.xz' | wc -l)
if [[ $n_xz -gt 0 ]]; then
    log "decompressing $n_xz .ko.xz modules"
    find "$DEST/modules" -name '*.ko.xz' -print0 | xargs -0 -r -n 64 -P "$(nproc)" xz -d
fi
if find "$DEST/modules" -name '*.ko.zst' | grep -q .; then
    ensure_packages zstd
    find "$DEST/modules" -name '*.ko.zst' -print0 | xargs -0 -r -n 64 sh -c 'for f; do zstd -q -d --rm "$f"; done' _
fi
if find "$DEST/modules" -name '*.ko.gz' | grep -q .; then
    find "$DEST/modules" -name '*.ko.gz' -print0 | xargs -0 -r gunzip
fi

# name -> path index (module names use '_' where file names may use '-').
(cd "$DEST/modules" && find . -name '*.ko' | sed 's|^\./||' | sort |
    awk '{ n = $0; sub(/.*\//, "", n); sub(/\.ko$/, "", n); gsub(/-/, "_", n); print n, $0 }') >"$DEST/modules.index"
for m in virtio virtio_ring virtio_mmio netfs fscache 9pnet 9pnet_virtio 9p; do
    grep -q "^$m " "$DEST/modules.index" || die "module $m missing from $PKG"
done
grep -q '^overlay ' "$DEST/modules.index" || log "warning: overlay.ko not in $PKG (overlayfs unavailable unless built in)"

echo "$PKG $PKGVER" >"$DEST/package"
touch "$DEST/.complete"

# Install atomically, then drop older kernels.
rm -rf "${CACHE:?}/$KVER"
mv "$DEST" "$CACHE/$KVER"
ln -sfn "$KVER" "$CACHE/current.tmp"
mv -T "$CACHE/current.tmp" "$CACHE/current"
for old in "$CACHE"/*/; do
    old=${old%/}
    [[ -L "$old" ]] && continue
    [[ "$(basename "$old")" == "$KVER" ]] && continue
    [[ -f "$old/vmlinux" || -f "$old/.complete" ]] && { log "removing old kernel $(basename "$old")"; rm -rf "$old"; }
done
finish "$CACHE/$KVER"
