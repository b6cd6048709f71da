#!/usr/bin/env bash
# Starts libvirtd with the QEMU driver on a plain Debian machine, as root, without systemd: what the VM
# snapshot tests (packages/snapshot) and bench/vm-snapshot.ts need. Idempotent: packages already present are
# not installed again, daemons already running are left alone. Ends when `virsh -c qemu:///system version`
# answers, or fails.
set -euo pipefail

if [[ $(id -u) -ne 0 ]]; then
  echo "start-libvirt: must run as root" >&2
  exit 1
fi

# Package -> a file it installs; install only what is missing (no recommends: they pull in dozens of drivers
# and services that a daemon without systemd neither needs nor can start).
declare -A provides=(
  [qemu-utils]=/usr/bin/qemu-img
  [qemu-system-x86]=/usr/bin/qemu-system-x86_64
  [libvirt-daemon]=/usr/sbin/libvirtd
  [libvirt-daemon-driver-qemu]=/usr/lib/x86_64-linux-gnu/libvirt/connection-driver/libvirt_driver_qemu.so
  [libvirt-clients]=/usr/bin/virsh
)
missing=()
for package in "${!provides[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'install ok installed' || [[ ! -e ${provides[$package]} ]]; then
    missing+=("$package")
  fi
done
if ((${#missing[@]})); then
  echo "start-libvirt: installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The QEMU driver resolves its built-in default user and group (libvirt-qemu) before it reads qemu.conf, and
# refuses to start when they do not exist ("Failed to parse user 'libvirt-qemu'"); libvirt-daemon-system would
# create them, but it needs systemd. (kvm: the group Debian gives /dev/kvm.)
getent group kvm >/dev/null || groupadd --system kvm
getent group libvirt-qemu >/dev/null || groupadd --system libvirt-qemu
getent passwd libvirt-qemu >/dev/null ||
  useradd --system --gid kvm --groups libvirt-qemu --home-dir /var/lib/libvirt --no-create-home --shell /usr/sbin/nologin libvirt-qemu

# qemu then runs as root all the same: test images live anywhere, owned by root. No security driver: nothing
# to confine guests with inside a container or a minimal VM.
conf=/etc/libvirt/qemu.conf
mkdir -p /etc/libvirt
touch "$conf"
set_conf() {
  local key=$1 value=$2
  if grep -qE "^[[:space:]]*${key}[[:space:]]*=" "$conf"; then
    sed -i -E "s|^[[:space:]]*${key}[[:space:]]*=.*|${key} = ${value}|" "$conf"
  else
    echo "${key} = ${value}" >>"$conf"
  fi
}
set_conf user '"root"'
set_conf group '"root"'
set_conf dynamic_ownership 0
set_conf security_driver '"none"'

mkdir -p /var/log/libvirt/qemu /var/run/libvirt /var/lib/libvirt/qemu /var/cache/libvirt/qemu

running() { # pidfile
  [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null
}
running /var/run/virtlogd.pid || virtlogd -d
running /var/run/libvirtd.pid || libvirtd -d

for _ in $(seq 1 100); do
  if virsh -c qemu:///system version >/dev/null 2>&1; then
    virsh -c qemu:///system version | sed -n '1,4p'
    if [[ -r /dev/kvm && -w /dev/kvm ]] && virsh -c qemu:///system domcapabilities --virttype kvm >/dev/null 2>&1; then
      echo "start-libvirt: KVM available"
    else
      echo "start-libvirt: no usable KVM; guests run under TCG"
    fi
    exit 0
  fi
  sleep 0.2
done
echo "start-libvirt: libvirtd did not answer on qemu:///system" >&2
tail -20 /var/log/libvirt/libvirtd.log 2>/dev/null >&2 || true
exit 1
