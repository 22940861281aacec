#!/usr/bin/env bash
# Installs what moat needs on a Debian machine (run as root): the kernel
# tools for both backends, iproute2 for namespaces, netbase for service
# names, and openssh-server for the lockout and guard tests.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends \
  nftables iptables ipset iproute2 kmod netbase procps openssh-server ca-certificates >/dev/null
if ! command -v go >/dev/null 2>&1 && [ ! -x /usr/local/go/bin/go ]; then
  apt-get install -y -qq --no-install-recommends golang-go >/dev/null
fi
echo "moat setup: packages installed"
