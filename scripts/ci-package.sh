#!/usr/bin/env bash
# CI for the package: build two .debs (an older and a newer version), lint
# them, then install, upgrade, remove and purge on this machine. The dpkg
# part runs in a private network namespace (unshare --net), so nothing a
# maintainer script or moat does can reach this machine's firewall; there,
# it also proves that installing and upgrading change no rule and that
# purging removes moat's rules of both backends.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin:/usr/sbin:/sbin"

say() { echo "ci-package: $*"; }
fail() {
	echo "ci-package: FAIL: $*" >&2
	exit 1
}

if [ -z "${MOAT_CI_PACKAGE_NETNS:-}" ]; then
	if dpkg-query -W moat >/dev/null 2>&1; then
		fail "a moat package is installed on this machine already; this test installs and purges its own"
	fi
	# moat's folders from other runs (a source install, the tests) are
	# moved aside while the package is installed and purged, and put back.
	saved=()
	restore() {
		for d in "${saved[@]}"; do
			rm -rf "$d"
			mv "$d.ci-package-saved" "$d"
		done
	}
	trap restore EXIT
	for d in /etc/moat /var/lib/moat; do
		if [ -e "$d" ]; then
			[ ! -e "$d.ci-package-saved" ] || fail "$d.ci-package-saved exists: an earlier run was interrupted; put it back first"
			mv "$d" "$d.ci-package-saved"
			saved+=("$d")
			say "moved $d aside for the test"
		fi
	done
	base=$(tr -d '[:space:]' <packaging/VERSION)
	old="$base~ci1" new="$base~ci2"
	rm -rf dist
	MOAT_VERSION=$old bash scripts/package.sh deb >/dev/null
	MOAT_VERSION=$new bash scripts/package.sh deb >/dev/null
	olddeb=$(ls dist/moat_"$old"_*.deb) newdeb=$(ls dist/moat_"$new"_*.deb)
	say "built $olddeb and $newdeb"
	# No errors or warnings; every override is justified in
	# packaging/lintian-overrides.
	lint=$(lintian --fail-on error,warning "$olddeb" 2>&1) || fail "lintian: $lint"
	echo "$lint" | grep -v '^running with root privileges' || true
	say "lintian: clean"
	MOAT_CI_HOST_NS=$(readlink /proc/self/ns/net)
	export MOAT_CI_PACKAGE_NETNS=1 MOAT_CI_HOST_NS MOAT_OLD=$old MOAT_NEW=$new MOAT_OLD_DEB=$olddeb MOAT_NEW_DEB=$newdeb
	unshare --net -- bash "$0"
	exit $?
fi

# From here on: inside a private network namespace.
[ "$(readlink /proc/self/ns/net)" != "${MOAT_CI_HOST_NS:-}" ] || fail "not in a private network namespace"
ip link set lo up
trap 'dpkg_wait --purge moat >/dev/null 2>&1 || true' EXIT

# Minimal Debian images exclude documentation from packages
# (/etc/dpkg/dpkg.cfg.d/excludes); this test checks the man pages.
dpkg_install() { dpkg_wait --path-include='/usr/share/man/*' --path-include='/usr/share/doc/moat/*' -i "$1"; }

# dpkg, waiting (up to 2 minutes) while apt or dpkg holds its lock.
dpkg_wait() {
	local out i
	for i in $(seq 60); do
		if out=$(dpkg "$@" 2>&1); then
			echo "$out"
			return 0
		fi
		case "$out" in
		*"lock was locked"* | *"dpkg status database is locked"*) sleep 2 ;;
		*)
			echo "$out"
			return 1
			;;
		esac
	done
	echo "$out"
	return 1
}

firewall() {
	{
		nft list ruleset 2>/dev/null || true
		iptables-save 2>/dev/null || true
		ip6tables-save 2>/dev/null || true
		ipset list -n 2>/dev/null || true
	} | grep -v '^#' || true
}

before=$(firewall)
out=$(dpkg_install "$MOAT_OLD_DEB" 2>&1) || fail "dpkg -i: $out"
grep -q "The firewall was not changed" <<<"$out" || fail "postinst did not say the firewall is unchanged: $out"
[ "$(firewall)" = "$before" ] || fail "installing changed the firewall"
say "installed $MOAT_OLD; the firewall is unchanged"

grep -qx "moat $MOAT_OLD" <<<"$(moat version)" || fail "moat version: $(moat version)"
grep -q "^commit: " <<<"$(moat --version)" || fail "moat --version: $(moat --version)"
# The guard with its metrics, which 'moat guard --metrics-listen' runs.
grep -qx "moat $MOAT_OLD" <<<"$(/usr/lib/moat/moat-guard-metrics version)" ||
	fail "/usr/lib/moat/moat-guard-metrics version: $(/usr/lib/moat/moat-guard-metrics version 2>&1)"
man -w moat >/dev/null || fail "man -w moat"
man -w moat.conf >/dev/null || fail "man -w moat.conf"
man -w moat-allow >/dev/null || fail "man -w moat-allow"
[ "$(man -w 5 moat.conf)" = /usr/share/man/man5/moat.conf.5.gz ] || fail "moat.conf(5) is not in section 5"
for f in /usr/share/bash-completion/completions/moat /usr/share/zsh/vendor-completions/_moat \
	/usr/share/fish/vendor_completions.d/moat.fish; do
	grep -q "__complete" "$f" || fail "completion file $f is missing or empty"
done
bash -c 'source /usr/share/bash-completion/completions/moat && complete -p moat' >/dev/null ||
	fail "the bash completion does not register"
grep -qx tcp <<<"$(moat __complete allow proto '' 2>/dev/null)" || fail "completion of protocols"
grep -qx deny <<<"$(moat __complete default '' 2>/dev/null)" || fail "completion of default"
moat app list >/dev/null || fail "moat app list"
[ -d /etc/moat/apps.d ] || fail "no /etc/moat/apps.d"
grep -qx 'ExecStart=/usr/sbin/moat restore' /lib/systemd/system/moat.service || fail "moat.service ExecStart"
grep -qx 'ExecStart=/usr/sbin/moat guard' /lib/systemd/system/moat-guard.service || fail "moat-guard.service ExecStart"
grep -qx 'ExecStart=/usr/sbin/moat blocklist update --due' /lib/systemd/system/moat-blocklist.service || fail "moat-blocklist.service ExecStart"
systemd-analyze verify /lib/systemd/system/moat.service /lib/systemd/system/moat-guard.service \
	/lib/systemd/system/moat-blocklist.service /lib/systemd/system/moat-blocklist.timer ||
	fail "systemd-analyze verify"
grep -q '^ /etc/moat/moat.conf ' <<<"$(dpkg-query -W -f='${Conffiles}\n' moat)" || fail "moat.conf is not a conffile"
say "version, man pages, completions, units and conffile: ok"

# The admin edits the policy and turns moat on (in this namespace).
moat allow 2222/tcp comment 'ci edit' >/dev/null
moat --force enable >/dev/null
nft list table inet moat >/dev/null || fail "moat enable loaded no rules"
applied=$(firewall)

out=$(dpkg_install "$MOAT_NEW_DEB" 2>&1) || fail "upgrade: $out"
grep -qx "moat $MOAT_NEW" <<<"$(moat version)" || fail "after the upgrade, moat version: $(moat version)"
grep -q "^allow 2222/tcp comment 'ci edit'" /etc/moat/moat.conf || fail "the upgrade lost the edit of moat.conf"
[ "$(firewall)" = "$applied" ] || fail "upgrading changed the firewall"
# The first command after an upgrade tells moat's own rendering of an
# older version from a hand change: never the latter for an upgrade.
st=$(moat status 2>&1 || true)
if grep -q "changed outside moat" <<<"$st"; then
	fail "after the upgrade, status reports a change by hand: $st"
fi
say "upgraded to $MOAT_NEW: moat.conf edit kept, the firewall is unchanged"

# moat's rules in both backends, for the purge to remove.
moat show --backend nftables >/tmp/moat-ci-nft.$$
moat --force --backend iptables reload >/dev/null
nft -f /tmp/moat-ci-nft.$$
rm -f /tmp/moat-ci-nft.$$
grep -q MOAT-INPUT <<<"$(iptables-save)" || fail "no iptables rules to purge"
nft list table inet moat >/dev/null || fail "no nftables rules to purge"
# A temporary set as a moat killed while filling a policy set leaves it.
ipset create moatnew-input_ci_0 hash:net || fail "ipset create moatnew-input_ci_0"

out=$(dpkg_wait --remove moat 2>&1) || fail "dpkg --remove: $out"
grep -q "leaves the active firewall" <<<"$out" || fail "remove did not say it leaves the firewall: $out"
grep -q MOAT-INPUT <<<"$(iptables-save)" || fail "removing the package removed moat's rules"
[ -f /etc/moat/moat.conf ] || fail "remove deleted the configuration"
[ ! -e /usr/sbin/moat ] || fail "remove left /usr/sbin/moat"
say "removed: rules and configuration stay"

out=$(dpkg_wait --purge moat 2>&1) || fail "dpkg --purge: $out"
left=$(firewall | grep -i moat || true)
[ -z "$left" ] || fail "purge left rules: $left"
for p in /usr/sbin/moat /usr/lib/moat /etc/moat /var/lib/moat /lib/systemd/system/moat.service \
	/lib/systemd/system/moat-guard.service /lib/systemd/system/moat-blocklist.service \
	/lib/systemd/system/moat-blocklist.timer /usr/share/doc/moat /usr/share/man/man8/moat.8.gz \
	/usr/share/man/man5/moat.conf.5.gz /usr/share/bash-completion/completions/moat \
	/usr/share/zsh/vendor-completions/_moat /usr/share/fish/vendor_completions.d/moat.fish \
	/usr/share/lintian/overrides/moat /etc/moat/apps.d; do
	[ ! -e "$p" ] || fail "purge left $p"
done
ls /usr/share/man/man8/moat-* >/dev/null 2>&1 && fail "purge left man pages"
! dpkg-query -W moat >/dev/null 2>&1 || grep -q not-installed <<<"$(dpkg-query -W -f='${Status}' moat)" ||
	fail "dpkg still knows moat: $(dpkg-query -W -f='${Status}' moat)"
say "purged: no rules, files or state of moat left"
