#!/usr/bin/env bash
# Installs what moat needs on a Debian machine (run as root): the kernel
# tools for both backends, iproute2 for namespaces, netbase for service
# names, OpenSSH and dropbear for the lockout and guard tests
# (systemd-socket-activate, from systemd, for socket-activated sshd), nmap
# for the port scan tests, and lintian, man-db and
# systemd (systemd-analyze) for the package checks (scripts/ci-package.sh),
# and ufw for the differential test of 'moat import ufw' (it only ever runs
# inside the tests' namespaces; the package leaves ufw disabled). Go itself must be
# there already (/usr/local/go or on PATH), at the version go.mod names.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends \
  nftables iptables ipset iproute2 kmod netbase procps openssh-server openssh-client dropbear-bin ca-certificates nmap \
  lintian man-db systemd ufw strace jq >/dev/null
export PATH="$PATH:/usr/local/go/bin"
if ! command -v go >/dev/null 2>&1; then
  echo "moat setup: Go is not installed: install Go $(sed -n 's/^go //p' "$(dirname "$0")/../go.mod") or later" >&2
  exit 1
fi
echo "moat setup: packages installed; $(go version)"
