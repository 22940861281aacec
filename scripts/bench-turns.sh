#!/usr/bin/env bash
# bench-turns.sh: two moat binaries, old and new, taking turns on the same
# real commands in scratch network namespaces, in the same minutes.
#
# A developer's tool, run by hand as root. It never touches the host's
# firewall, /etc/moat or /var/lib/moat: every command runs with
# `ip netns exec` in a namespace this script made, with --config and
# --state-dir under a mktemp directory, all removed on exit.
#
# Usage:
#   OLD=REV|PATH [NEW=REV|PATH] [BACKEND=nftables|iptables] [N=100000] \
#     [K=10] [ROUNDS=4] [CHRT=1] scripts/bench-turns.sh SCENARIO
#
# OLD and NEW are a moat binary (an executable path) or a git revision of
# this repository, built with `go build ./cmd/moat` from `git archive`.
# NEW defaults to the working tree. Each binary has a namespace and state
# directory of its own (binaries of different commits must not share one).
#
# Scenarios (ROUNDS rounds; in each, OLD runs K commands, then NEW):
#   edit     the policy of N `deny from` lines the e2e benchmarks use
#            (N/2 IPv4 addresses, N/2 IPv6 /64s, `default deny incoming`,
#            `allow 22/tcp`), enabled once untimed; then `moat allow
#            8080/tcp` and `moat delete allow 8080/tcp` in turn, each timed.
#            N=0 is the fixed cost of a command (a two-line policy).
#   refresh  `blocklist big file LIST` with a list of N networks (the e2e
#            bigList: N/2 IPv4, N/2 IPv6 /64s); `moat blocklist update`
#            timed, the list alternating between two versions 100 IPv4
#            networks apart (each update must report +100 -100).
#   enable   the policy of `edit`; each timed command is `moat enable
#            --force` into a namespace and state directory made fresh
#            (untimed) before it: a first apply.
#
# CHRT=1 runs each timed command (and what it starts) at real-time
# priority (`chrt -f 50`): it then runs ahead of the machine's other work,
# which stands in for a quiet machine when the load is high (the kernel's
# own threads, the disk and the locks other processes hold still count;
# see docs/benchmarks.md, eighth session, big100).
#
# Reported per binary, over all its timed commands: the median wall time
# and the median CPU time (user+sys: the command and every program it
# started and waited for; bash's `time` inside the namespace, 1 ms
# resolution, GNU time's own start included, the same for both binaries),
# and the median and largest peak RSS (/usr/bin/time's %M: wait4's
# maximum, the largest of moat and the programs it started).
# Per-round medians of CPU follow, to show the spread. The load average
# is printed at the start and end: quote it with the figures.
set -euo pipefail

die() { echo "bench-turns: $*" >&2; exit 2; }

scenario=${1:-}
case $scenario in
edit | refresh | enable) ;;
*) die "usage: OLD=REV|PATH [NEW=REV|PATH] [BACKEND=..] [N=..] [K=..] [ROUNDS=..] [CHRT=1] $0 edit|refresh|enable" ;;
esac
[[ $(id -u) == 0 ]] || die "run as root (network namespaces)"
[[ -x /usr/bin/time ]] || die "needs GNU time (/usr/bin/time; apt-get install time)"
: "${OLD:?OLD=REV|PATH is required}"
NEW=${NEW:-}
BACKEND=${BACKEND:-nftables}
N=${N:-100000}
K=${K:-10}
ROUNDS=${ROUNDS:-4}
CHRT=${CHRT:-0}
[[ $CHRT == 0 || $CHRT == 1 ]] || die "CHRT must be 0 or 1"
prio=()
if [[ $CHRT == 1 ]]; then
	command -v chrt >/dev/null || die "CHRT needs chrt (util-linux)"
	prio=(chrt -f 50)
fi
[[ $BACKEND == nftables || $BACKEND == iptables ]] || die "BACKEND must be nftables or iptables"
[[ $N =~ ^[0-9]+$ && $K =~ ^[1-9][0-9]*$ && $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "N, K and ROUNDS must be numbers (K, ROUNDS >= 1)"
if [[ $scenario == refresh && $N -lt 202 ]]; then
	die "refresh needs N >= 202 (100 IPv4 networks are swapped)"
fi

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
tmp=$(mktemp -d /tmp/moat-bench-turns.XXXXXX)
nss=()
cleanup() {
	local ns
	for ns in "${nss[@]}"; do
		ip netns delete "$ns" 2>/dev/null || true
	done
	rm -rf -- "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# binary NAME SPEC: a moat binary at $tmp/NAME/moat, from a path or a rev.
binary() {
	local name=$1 spec=$2 out=$tmp/$1/moat rev
	mkdir -p "$tmp/$name"
	if [[ -z $spec ]]; then
		(cd "$repo" && go build -o "$out" ./cmd/moat)
		echo "$name: working tree ($(git -C "$repo" describe --always --dirty 2>/dev/null || echo '?'))"
	elif [[ -f $spec && -x $spec ]]; then
		cp -- "$spec" "$out"
		echo "$name: $spec"
	else
		rev=$(git -C "$repo" rev-parse --verify --quiet "$spec^{commit}") || die "$spec: not an executable file nor a git revision"
		mkdir -p "$tmp/$name/src"
		git -C "$repo" archive "$rev" | tar -x -C "$tmp/$name/src"
		(cd "$tmp/$name/src" && go build -o "$out" ./cmd/moat)
		echo "$name: ${rev:0:7} (built from git archive)"
	fi
}

# The e2e benchmarks' policy (blockPolicy in e2e/apply_bench_test.go).
gen_policy() {
	awk -v n="$1" 'BEGIN {
		print "default deny incoming"
		for (i = 0; i < int(n / 2); i++) {
			printf "deny from 10.%d.%d.%d\n", int(i / 32768) % 256, int(i / 128) % 256, 2 * (i % 128)
			printf "deny from 2001:db8:%x:%x::/64\n", int(i / 128), 2 * (i % 128)
		}
		print "allow 22/tcp"
	}'
}

# The e2e blocklist (bigList in e2e/blocklist_test.go); version 1 has its
# first 100 IPv4 networks replaced by their odd neighbours.
gen_list() {
	awk -v n="$1" -v v="$2" 'function ip(a) { return sprintf("%d.%d.%d.%d", int(a / 16777216) % 256, int(a / 65536) % 256, int(a / 256) % 256, a % 256) }
	BEGIN {
		print "; a big list in Spamhaus layout"
		for (i = 0; i < int(n / 2); i++) {
			a = 1681915904 + 2 * i
			if (v == 1 && i < 100) print ip(a + 1)
			else printf "%s ; SBL%d\n", ip(a), i
		}
		for (i = 0; i < n - int(n / 2); i++)
			printf "2001:db8:f%03x:%x::/64\n", int((2 * i) / 65536) % 4096, (2 * i) % 65536
	}'
}

# fresh_ns NAME: (re)make namespace moatbt-PID-NAME with loopback up.
fresh_ns() {
	local ns=moatbt-$$-$1
	ip netns delete "$ns" 2>/dev/null || true
	ip netns add "$ns"
	ip -n "$ns" link set lo up
	nss+=("$ns")
}

# moat_in NAME ARGS...: run NAME's binary in its namespace, untimed.
moat_in() {
	local name=$1
	shift
	ip netns exec "moatbt-$$-$name" "$tmp/$name/moat" --config "$tmp/$name/moat.conf" \
		--backend "$BACKEND" --state-dir "$tmp/$name/state" "$@"
}

# timed NAME ARGS...: run it timed; append "round wall_ms cpu_ms rss_kb"
# to $tmp/NAME/results and the command's output to $tmp/NAME/last. A bash
# inside the namespace times the command with its `time` keyword (wall,
# and user+sys of its children at 1 ms resolution, not counting ip netns
# exec); /usr/bin/time between them gives the peak RSS. The arguments
# reach that bash as positional parameters, never as a command line.
timed() {
	local name=$1
	shift
	# shellcheck disable=SC2016 # expanded by the inner bash
	if ! ip netns exec "moatbt-$$-$name" bash -c 'TIMEFORMAT="%3R %3U %3S"; out=$1 rss=$2; shift 2
		{ time /usr/bin/time -f %M -o "$rss" "$@" >"$out" 2>&1; } 2>&1' bash \
		"$tmp/$name/last" "$tmp/$name/rss" "${prio[@]}" \
		"$tmp/$name/moat" --config "$tmp/$name/moat.conf" --backend "$BACKEND" \
		--state-dir "$tmp/$name/state" "$@" >"$tmp/$name/time"; then
		cat "$tmp/$name/last" >&2
		die "$name: moat $* failed"
	fi
	awk -v r="$round" -v rss="$(tail -n 1 "$tmp/$name/rss")" \
		'{ printf "%d %.1f %.1f %d\n", r, $1 * 1000, ($2 + $3) * 1000, rss }' \
		"$tmp/$name/time" >>"$tmp/$name/results"
}

setup() {
	local name=$1
	rm -rf -- "$tmp/$name/state"
	fresh_ns "$name"
	case $scenario in
	edit | enable)
		gen_policy "$N" >"$tmp/$name/moat.conf"
		[[ $scenario == edit ]] && moat_in "$name" enable --force >/dev/null
		;;
	refresh)
		gen_list "$N" 0 >"$tmp/$name/big.list"
		printf 'default deny incoming\nallow 22/tcp\nblocklist big file %s\n' "$tmp/$name/big.list" >"$tmp/$name/moat.conf"
		moat_in "$name" enable --force >/dev/null
		moat_in "$name" blocklist update >/dev/null
		echo 0 >"$tmp/$name/version"
		;;
	esac
	return 0
}

turn() {
	local name=$1 i v
	for ((i = 0; i < K; i++)); do
		case $scenario in
		edit)
			if (($(wc -l <"$tmp/$name/results" 2>/dev/null || echo 0) % 2 == 0)); then
				timed "$name" allow 8080/tcp
			else
				timed "$name" delete allow 8080/tcp
			fi
			;;
		refresh)
			v=$((1 - $(cat "$tmp/$name/version")))
			cp -- "$tmp/list.$v" "$tmp/$name/big.list"
			echo "$v" >"$tmp/$name/version"
			timed "$name" blocklist update
			grep -q -- '(+100 -100)' "$tmp/$name/last" || {
				cat "$tmp/$name/last" >&2
				die "$name: the update did not change 100 networks each way"
			}
			;;
		enable)
			setup "$name"
			timed "$name" enable --force
			;;
		esac
	done
}

binary old "$OLD"
binary new "$NEW"
if [[ $scenario == refresh ]]; then
	gen_list "$N" 0 >"$tmp/list.0"
	gen_list "$N" 1 >"$tmp/list.1"
fi
echo "scenario $scenario, backend $BACKEND, N=$N, K=$K, ROUNDS=$ROUNDS"
echo "load at start: $(cut -d' ' -f1-3 /proc/loadavg)${prio[*]:+ (timed commands at real-time priority: ${prio[*]})}"
for name in old new; do
	: >"$tmp/$name/results"
	[[ $scenario == enable ]] || setup "$name"
done
for ((round = 1; round <= ROUNDS; round++)); do
	turn old
	turn new
done
echo "load at end: $(cut -d' ' -f1-3 /proc/loadavg)"

# median over column COL of the lines on stdin
median() {
	sort -n -k"$1","$1" | awk -v c="$1" '{ v[NR] = $c } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
printf '%-4s %6s %14s %13s %15s %14s  %s\n' binary runs "wall ms (med)" "cpu ms (med)" "rss MB (med)" "rss MB (max)" "cpu ms by round (med)"
for name in old new; do
	f=$tmp/$name/results
	rounds=""
	for ((round = 1; round <= ROUNDS; round++)); do
		rounds+=" $(awk -v r="$round" '$1 == r' "$f" | median 3)"
	done
	printf '%-4s %6d %14.1f %13.1f %15.1f %14.1f  %s\n' "$name" "$(wc -l <"$f")" \
		"$(median 2 <"$f")" "$(median 3 <"$f")" \
		"$(awk '{ print $4 / 1024 }' "$f" | median 1)" \
		"$(awk 'BEGIN { m = 0 } $4 > m { m = $4 } END { print m / 1024 }' "$f")" "$rounds"
done
