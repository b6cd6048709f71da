#!/usr/bin/env bash
# Builds the real Linux guest of the VM snapshot tests: a small Debian (the host's release, from the host's apt
# mirror) made with debootstrap, booted by libvirt with direct kernel boot. Prints the directory that holds it:
#
#   vmlinuz, initrd.img   the Debian kernel and an initramfs with just the virtio and ext4 modules
#   root.raw              ext4 root file system (no partition table: root=/dev/vda), sparse
#   data.raw              empty ext4 file system for the second disk (/data)
#   guest.json            what was built, and how long it took
#
# The guest runs systemd, qemu-guest-agent (with its fsfreeze hook enabled) and vm-writer.service, which
# appends a numbered line to /var/lib/vm-writer/log (root disk) and then to /data/log (second disk), each
# fsync'ed before the next, five times a second. The fsfreeze hook /etc/qemu/fsfreeze-hook.d/vm-marker appends
# "freeze N" to /var/lib/vm-hook/marker (synced) before the agent freezes the file systems, so a quiesced
# snapshot must hold it.
#
# Cached under build/vm-guest/<hash of this script>/ in the repository (ignored by git): a second run with the
# same script prints the directory at once. Needs root (debootstrap, chroot), debootstrap and e2fsprogs
# (installed when missing). Usage: scripts/build-test-guest.sh [--force]
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
script="$repo/scripts/$(basename "$0")"
hash=$(sha256sum "$script" | cut -c1-16)
cache_root="${QCOWKIT_VM_GUEST_CACHE:-$repo/build/vm-guest}"
out="$cache_root/$hash"
log() { echo "build-test-guest: $*" >&2; }

if [[ ${1:-} != --force && -s $out/guest.json ]]; then
  echo "$out"
  exit 0
fi
if [[ $(id -u) -ne 0 ]]; then
  log "must run as root (debootstrap)"
  exit 1
fi

mkdir -p "$cache_root"
# One build at a time (test processes may ask at once); the second waits and then finds the cache.
exec 9>"$cache_root/.lock"
flock 9
if [[ ${1:-} != --force && -s $out/guest.json ]]; then
  echo "$out"
  exit 0
fi

missing=()
command -v debootstrap >/dev/null || missing+=(debootstrap)
command -v mkfs.ext4 >/dev/null || missing+=(e2fsprogs)
if ((${#missing[@]})); then
  log "installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The host's Debian release and mirror (the only package source reachable from some machines).
suite=bookworm
if [[ -r /etc/os-release ]]; then
  # shellcheck disable=SC1091
  id=$(. /etc/os-release && echo "${ID:-}")
  codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
  [[ $id == debian && -n $codename ]] && suite=$codename
fi
mirror=$(
  cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null |
    grep -oE '(https?://[^ ]*/debian)/?( |$)' | grep -v security | head -1 | tr -d ' ' || true
)
mirror=${mirror:-http://deb.debian.org/debian}
mirror=${mirror%/}
proxy=$(apt-config shell p Acquire::http::Proxy 2>/dev/null | sed -n "s/^p='\(.*\)'$/\1/p" || true)
[[ -n $proxy ]] && export http_proxy=$proxy

work=$(mktemp -d "$cache_root/.build-vm-XXXXXX")
chmod 755 "$work"
trap 'rm -rf "$work"' EXIT
root="$work/root"
started=$(date +%s)
log "debootstrap $suite from $mirror (minbase, no recommends) into $work"
bootstrap_failed() {
  tail -30 "$work/debootstrap.log" >&2
  tail -30 "$root/debootstrap/debootstrap.log" >&2 2>/dev/null || true
  exit 1
}
# Two stages, so that dpkg is configured in between: no fsync per unpacked file (the image is made from the
# directory afterwards; a crash only means a rebuild), and an initramfs with only what mounts the root disk and
# reaches the agent's channel (small, quick to unpack under TCG), made once when the kernel package is
# configured. virtio_console is in it because the root file system keeps no modules.
debootstrap --foreign --variant=minbase --include=systemd,systemd-sysv,udev,qemu-guest-agent,linux-image-amd64,e2fsprogs \
  "$suite" "$root" "$mirror" >"$work/debootstrap.log" 2>&1 || bootstrap_failed
mkdir -p "$root/etc/dpkg/dpkg.cfg.d" "$root/etc/initramfs-tools/conf.d" "$root/usr/share/initramfs-tools/modules.d"
echo force-unsafe-io >"$root/etc/dpkg/dpkg.cfg.d/vm-guest-unsafe-io"
echo MODULES=list >"$root/etc/initramfs-tools/conf.d/vm-guest.conf"
printf '%s\n' virtio_pci virtio_blk virtio_console ext4 >"$root/usr/share/initramfs-tools/modules.d/vm-guest"
chroot "$root" /debootstrap/debootstrap --second-stage >>"$work/debootstrap.log" 2>&1 || bootstrap_failed
rm "$root/etc/dpkg/dpkg.cfg.d/vm-guest-unsafe-io"
debootstrapped=$(date +%s)

cp "$root"/boot/vmlinuz-* "$work/vmlinuz"
cp "$root"/boot/initrd.img-* "$work/initrd.img"
kernel=$(basename "$root"/boot/vmlinuz-*)

cat >"$root/etc/fstab" <<'EOF'
/dev/vda / ext4 defaults 0 1
/dev/vdb /data ext4 defaults,nofail,x-systemd.device-timeout=300s 0 2
EOF
echo vm-guest >"$root/etc/hostname"
mkdir -p "$root/data" "$root/var/lib/vm-writer" "$root/var/lib/vm-hook"

# The writer: perl (essential in Debian) keeps both files open and fsyncs each line; a shell loop would fork
# `sync` for every line, which takes a second per line under TCG.
cat >"$root/usr/local/sbin/vm-writer" <<'EOF'
#!/usr/bin/perl
# Appends "N SECONDS" to /var/lib/vm-writer/log, fsync, then the same line to /data/log, fsync; five times a
# second. A snapshot of both disks at one instant never has a line in /data/log that /var/lib/vm-writer/log
# lacks.
use strict;
use warnings;
use IO::Handle;
my @paths = ('/var/lib/vm-writer/log');
# /data only when the second disk is mounted there (not the root file system's empty directory).
push @paths, '/data/log' if (stat('/data'))[0] != (stat('/'))[0];
my @files = map { open(my $f, '>>', $_) or die "$_: $!"; $f } @paths;
my $n = 0;
if (open(my $old, '<', $paths[0])) { while (<$old>) { $n = $1 if /^(\d+) /; } close $old; }
while (1) {
  $n++;
  for my $f (@files) {
    print $f "$n " . time() . "\n" or die "write: $!";
    $f->flush or die "flush: $!";
    $f->sync or die "fsync: $!";
  }
  select(undef, undef, undef, 0.2);
}
EOF
chmod 755 "$root/usr/local/sbin/vm-writer"
cat >"$root/etc/systemd/system/vm-writer.service" <<'EOF'
[Unit]
Description=qcowkit VM test writer (a synced line on each disk, in order)
# After the second disk is mounted (or failed to be: the writer then writes to the root disk only).
Wants=data.mount
After=local-fs.target data.mount

[Service]
ExecStart=/usr/local/sbin/vm-writer
Restart=always
RestartSec=1

[Install]
WantedBy=multi-user.target
EOF
ln -sf /etc/systemd/system/vm-writer.service "$root/etc/systemd/system/multi-user.target.wants/vm-writer.service"

# qemu-ga runs /etc/qemu/fsfreeze-hook (which runs fsfreeze-hook.d/*) only when told to.
printf '[general]\nfsfreeze-hook=/etc/qemu/fsfreeze-hook\n' >"$root/etc/qemu/qemu-ga.conf"
cat >"$root/etc/qemu/fsfreeze-hook.d/vm-marker" <<'EOF'
#!/bin/sh
# An application's flush before the freeze: the marker must be in a quiesced snapshot.
case "$1" in
  freeze)
    n=$(($(wc -l 2>/dev/null </var/lib/vm-hook/marker || echo 0) + 1))
    echo "freeze $n" >>/var/lib/vm-hook/marker
    sync /var/lib/vm-hook/marker
    ;;
  thaw) echo "thaw" >>/var/lib/vm-hook/thaws ;;
esac
EOF
chmod 755 "$root/etc/qemu/fsfreeze-hook.d/vm-marker"

# Nothing the tests do not need at boot: no logins, no periodic jobs.
for unit in getty.target apt-daily.timer apt-daily-upgrade.timer dpkg-db-backup.timer e2scrub_all.timer \
  e2scrub_reap.service fstrim.timer systemd-firstboot.service; do
  ln -sf /dev/null "$root/etc/systemd/system/$unit"
done

# The root file system keeps no kernel modules (the initramfs loaded the few it needs), packages, docs,
# hardware database or charset converters: every byte of it is read by each snapshot the tests take.
rm -rf "$root"/lib/modules/* "$root"/boot/* "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* \
  "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/locale/* "$root"/usr/share/info/* \
  "$root"/usr/lib/udev/hwdb.d "$root"/usr/lib/udev/hwdb.bin "$root"/usr/lib/x86_64-linux-gnu/gconv

# ext4 images straight from the directory (mkfs.ext4 -d): no loop device, no mount.
mkfs.ext4 -q -F -L vm-root -E root_owner=0:0 -d "$root" "$work/root.raw" 512M
empty="$work/empty"
mkdir "$empty"
mkfs.ext4 -q -F -L vm-data -E root_owner=0:0 -d "$empty" "$work/data.raw" 64M
rm -rf "$root" "$empty"

finished=$(date +%s)
cat >"$work/guest.json" <<EOF
{
  "suite": "$suite",
  "mirror": "$mirror",
  "kernel": "$kernel",
  "scriptHash": "$hash",
  "built": "$(date -u +%Y-%m-%dT%H:%M:%SZ)",
  "debootstrapSeconds": $((debootstrapped - started)),
  "totalSeconds": $((finished - started))
}
EOF
rm -f "$work/debootstrap.log"
rm -rf "$out"
mv "$work" "$out"
trap - EXIT
# Older builds (other script versions) are not used any more.
find "$cache_root" -mindepth 1 -maxdepth 1 -type d ! -name "$hash" -exec rm -rf {} +
log "built in $((finished - started)) s ($kernel)"
echo "$out"
