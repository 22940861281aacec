#!/usr/bin/env bash
# The README's first command: set up a fresh Debian machine, build moat,
# and run the lab demo (as root: it builds network namespaces).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"
bash scripts/setup.sh
go build -o moat ./cmd/moat
exec ./moat lab "$@"
