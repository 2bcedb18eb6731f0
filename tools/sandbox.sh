#!/bin/bash
# Run a command in a private sandbox: own network, mount and UTS namespaces, private tmpfs over
# /run, /etc/cni, /opt/cni and /var/lib/cni. Nothing it creates reaches the host's network or files.
# Usage: tools/sandbox.sh CMD...   (re-executes itself under unshare when not yet inside)
set -euo pipefail
if [ "${CNIKIT_SANDBOX:-}" != "1" ]; then
  export CNIKIT_SANDBOX=1
  exec unshare --net --mount --uts --fork --kill-child "$0" "$@"
fi
mount --make-rprivate /
mount -t tmpfs -o mode=755 tmpfs /run
mkdir -p /run/netns /run/lock /run/user /run/cni
mkdir -p /var/lib/cni /etc/cni /opt/cni
mount -t tmpfs tmpfs /var/lib/cni
mount -t tmpfs tmpfs /etc/cni; mkdir -p /etc/cni/net.d
mount -t tmpfs tmpfs /opt/cni; mkdir -p /opt/cni/bin
# sysfs of this netns (skipped when a test needs the host's cgroup tree, e.g. podman)
[ -n "${KEEP_SYS:-}" ] || mount -t sysfs sysfs /sys
hostname cnikit-sandbox
ip link set lo up
exec "$@"
