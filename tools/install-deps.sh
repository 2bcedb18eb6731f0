#!/bin/bash
# Install the Debian packages the demo and the tests need, only those missing (root; apt-get update once).
# gcc + libc6-dev build the compiled CNI exec relay (plugins/module_utils/cni/node/relay.c); without them the
# executables are the slower dash + Python launchers.
set -euo pipefail
PKGS="gcc libc6-dev containernetworking-plugins podman containerd busybox-static iptables nftables python3-nftables iputils-ping dnsmasq-base etcd-server iproute2 util-linux etcd-client bird2 openssh-server sudo qemu-system-x86 tcpdump"
missing=""
for p in $PKGS; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
[ -z "$missing" ] && exit 0
echo "installing Debian packages:$missing" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends $missing
