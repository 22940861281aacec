#!/usr/bin/env bash
# Builds moat's packages into dist/ with nfpm (pinned in go.mod as a Go tool
# dependency: 'go tool nfpm') from one config, packaging/nfpm.yaml.
#
#   scripts/package.sh            # .deb and .rpm
#   scripts/package.sh deb        # only the .deb
#
# The version is packaging/VERSION on a tagged commit (vX.Y.Z), else
# VERSION~git<commit time>.<commit>, so every later commit upgrades the
# one before; MOAT_VERSION overrides it. SOURCE_DATE_EPOCH (default: the
# commit's time) dates the build, the man pages and the changelog, so two
# builds of one commit are identical.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"

formats=${1:-all}
case "$formats" in
all) formats="deb rpm" ;;
deb | rpm) ;;
*)
	echo "usage: $0 [deb|rpm|all]" >&2
	exit 2
	;;
esac

base=$(tr -d '[:space:]' <packaging/VERSION)
commit=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
if [ "$commit" != unknown ] && [ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ]; then
	commit="$commit-dirty"
fi
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}
version=${MOAT_VERSION:-}
if [ -z "$version" ]; then
	if [ "$(git describe --exact-match --tags 2>/dev/null || true)" = "v$base" ]; then
		version=$base
	else
		version="$base~git$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y%m%d%H%M%S).${commit:0:7}"
	fi
fi
built=$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y-%m-%dT%H:%M:%SZ)
pkg=github.com/moat-fw/moat/internal/cli
ldflags="-s -w -X $pkg.Version=$version -X $pkg.Commit=$commit -X $pkg.BuildDate=$built"

build=build/pkg
rm -rf "$build"
mkdir -p "$build/man/man8" "$build/man/man5" "$build/completions" "$build/doc" dist

echo "moat package: building moat $version ($commit)"
CGO_ENABLED=0 go build -trimpath -buildvcs=false -ldflags "$ldflags" -o "$build/moat" ./cmd/moat
# The guard with its Prometheus metrics ('moat guard --metrics-listen' runs
# it): the metrics library is linked there only (docs/benchmarks.md).
CGO_ENABLED=0 go build -trimpath -buildvcs=false -ldflags "$ldflags" -o "$build/moat-guard-metrics" ./cmd/moat-guard-metrics

# moat(8) and a page per command, from the command tree; moat.conf(5) by hand.
go run -buildvcs=false -ldflags "$ldflags" ./packaging/gendocs "$build/man/man8"
cp packaging/man/moat.conf.5 "$build/man/man5/"
gzip -9n "$build"/man/man8/*.8 "$build"/man/man5/*.5

"$build/moat" completion bash >"$build/completions/moat.bash"
"$build/moat" completion zsh >"$build/completions/_moat"
"$build/moat" completion fish >"$build/completions/moat.fish"

cp packaging/copyright "$build/doc/copyright"
{
	if [ "$version" != "$base" ]; then
		printf 'moat (%s) unstable; urgency=medium\n\n  * Development build of commit %s.\n\n' "$version" "$commit"
		printf ' -- moat developers <moat-fw@users.noreply.github.com>  %s\n\n' \
			"$(LC_ALL=C date -u -R -d "@$SOURCE_DATE_EPOCH")"
	fi
	cat packaging/changelog
} | gzip -9n >"$build/doc/changelog.gz"

export MOAT_VERSION=$version
MOAT_ARCH=$(go env GOARCH)
export MOAT_ARCH
for f in $formats; do
	go tool nfpm package --config packaging/nfpm.yaml --packager "$f" --target dist/
done
ls -l dist/
