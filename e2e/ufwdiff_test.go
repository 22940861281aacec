package e2e

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/moat-fw/moat/internal/lab"
)

// The differential test of 'moat import ufw': random rule sets are built
// with the real ufw CLI (its own /etc/ufw copy, in the server's network
// namespace and a private mount namespace, never the host's), enabled
// there, and probed with real packets; then 'moat import ufw' converts
// ufw's state and moat applies it (both backends) in a fresh lab, and the
// same probes must get the same verdicts.

// ufwSandbox runs ufw in ns with a private copy of /etc/ufw, /lib/ufw
// (ufw's state directory) and /etc/default/ufw bound over the real ones,
// and a private /run; it refuses to run in the host's network namespace.
type ufwSandbox struct {
	t   *testing.T
	ns  *lab.NS
	dir string
}

func newUFWSandbox(t *testing.T, ns *lab.NS) *ufwSandbox {
	t.Helper()
	dir := t.TempDir()
	if out, err := exec.Command("cp", "-a", "/etc/ufw", filepath.Join(dir, "etc-ufw")).CombinedOutput(); err != nil {
		t.Fatalf("copy /etc/ufw: %v\n%s", err, out)
	}
	if out, err := exec.Command("cp", "-a", "/lib/ufw", filepath.Join(dir, "lib-ufw")).CombinedOutput(); err != nil {
		t.Fatalf("copy /lib/ufw: %v\n%s", err, out)
	}
	defs, err := os.ReadFile("/etc/default/ufw")
	if err != nil {
		t.Fatal(err)
	}
	// No sysctl changes (some are not per namespace); no built-in policy
	// changes beyond ufw's chains.
	var lines []string
	for _, l := range strings.Split(string(defs), "\n") {
		if strings.HasPrefix(l, "IPT_SYSCTL=") {
			l = "IPT_SYSCTL=" + filepath.Join(dir, "sysctl.conf")
		}
		lines = append(lines, l)
	}
	writeFile(t, filepath.Join(dir, "default-ufw"), strings.Join(lines, "\n"))
	writeFile(t, filepath.Join(dir, "sysctl.conf"), "")
	if err := os.MkdirAll(filepath.Join(dir, "run"), 0o755); err != nil {
		t.Fatal(err)
	}
	return &ufwSandbox{t: t, ns: ns, dir: dir}
}

const ufwSandboxScript = `set -e
# $2: the test process's (the host's) network namespace.
here=$(readlink /proc/self/ns/net)
if [ -z "$here" ] || [ -z "$2" ] || [ "$here" = "$2" ]; then
	echo "refusing to run ufw in the host's network namespace ($here)" >&2
	exit 99
fi
mount --make-rprivate /
mount --bind "$1/etc-ufw" /etc/ufw
mount --bind "$1/lib-ufw" /lib/ufw
mount --bind "$1/default-ufw" /etc/default/ufw
mount --bind "$1/run" /run
shift 2
exec ufw "$@"`

func (s *ufwSandbox) ufw(args ...string) string {
	s.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	hostNet, err := os.Readlink("/proc/self/ns/net")
	if err != nil {
		s.t.Fatal(err)
	}
	full := append([]string{"-m", "--", "sh", "-c", ufwSandboxScript, "sh", s.dir, hostNet}, args...)
	out, err := s.ns.Run(ctx, "unshare", full...)
	if err != nil {
		s.t.Fatalf("ufw %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// randomUFWRules is a rule set in ufw's CLI syntax; routed sets also
// have route rules (the server forwards to a backend host).
func randomUFWRules(r *rand.Rand, apps, routed bool) [][]string {
	pick := func(xs ...string) string { return xs[r.IntN(len(xs))] }
	var rules [][]string
	// Not 'default reject incoming': ufw 0.36 with iptables-nft leaves
	// ufw6-reject-input empty, so its IPv6 default drops instead (moat
	// rejects, as the policy says).
	rules = append(rules, []string{"default", pick("deny", "deny", "allow"), "incoming"})
	if r.IntN(3) == 0 {
		rules = append(rules, []string{"default", "deny", "outgoing"})
	}
	if routed {
		rules = append(rules, []string{"default", pick("deny", "allow"), "routed"})
		for range 1 + r.IntN(3) {
			act := pick("allow", "deny", "reject")
			switch r.IntN(3) {
			case 0:
				rules = append(rules, []string{"route", act, pick("80", "443", "53") + pick("/tcp", "/udp", "")})
			case 1:
				rules = append(rules, []string{"route", act, "in", "on", "eth0", "out", "on", "eth1", "to", pick("198.51.100.2", "2001:db8:1::2", "any"), "port", pick("80", "443")})
			case 2:
				if act == "reject" {
					act = "deny" // see 'reject from IPV6' below
				}
				rules = append(rules, []string{"route", act, "from", pick("192.0.2.3", "2001:db8::3", "192.0.2.2/31")})
			}
		}
	}
	addrs := []string{"192.0.2.3", "192.0.2.2/31", "2001:db8::3", "2001:db8::/126", "192.0.2.0/255.255.255.252", "2001:db8::2"}
	n := 3 + r.IntN(6)
	limits := 0
	for range n {
		act := pick("allow", "allow", "deny", "reject", "limit")
		// ufw's limit rules share one 'recent' list per source: the 6th
		// new connection to any limited port within 30 s is refused. moat
		// limits each rule on its own. At most 3 limited ports keep the
		// probes (one per port) under both thresholds.
		if act == "limit" {
			if limits++; limits > 3 {
				act = "allow"
			}
		}
		switch r.IntN(9) {
		case 0:
			rules = append(rules, []string{act, pick("22", "53", "80", "443", "2222", "5432", "8080", "123") + pick("", "/tcp", "/udp")})
		case 1:
			rules = append(rules, []string{act, pick("ssh", "http", "https", "smtp", "auth", "domain", "ntp")})
		case 2:
			if act == "limit" {
				act = "allow" // a list is several limited ports
			}
			rules = append(rules, []string{act, pick("80,443", "22,25,53", "6000:6007", "5432,8080") + "/" + pick("tcp", "udp")})
		case 3:
			rules = append(rules, []string{act, "proto", pick("tcp", "udp"), "from", pick(addrs...), "to", "any", "port", pick("22", "53", "80", "5432")})
		case 4:
			addr := pick(addrs...)
			// Not 'reject from IPV6': ufw answers TCP with ICMPv6 port
			// unreachable there, which the lab's TCP client sees as a
			// timeout; moat answers TCP with a reset (refused).
			if act == "limit" || (act == "reject" && strings.Contains(addr, ":")) {
				act = "deny"
			}
			rules = append(rules, []string{act, "from", addr})
		case 5:
			rules = append(rules, []string{act, "to", "any", "port", pick("25", "53", "113", "123"), "comment", "rule " + pick("a", "b", "c")})
		case 7, 8:
			// Outgoing rules, probed from the server to the client.
			if act == "limit" {
				act = "allow"
			}
			if r.IntN(2) == 0 {
				rules = append(rules, []string{act, "out", pick("25", "80", "53") + pick("", "/tcp", "/udp")})
			} else {
				rules = append(rules, []string{act, "out", "to", pick("192.0.2.2", "2001:db8::2", "192.0.2.0/24"), "port", pick("25", "80", "53")})
			}
		case 6:
			if apps {
				rules = append(rules, []string{act, "OpenSSH"})
			} else {
				rules = append(rules, []string{act, "2222/tcp"})
			}
		}
	}
	return rules
}

// diffProbes are sent in both labs.
func diffProbes(e *env, routed bool) []lab.Check {
	var specs []string
	if routed {
		for _, src := range []string{"192.0.2.2", "192.0.2.3", "2001:db8::2", "2001:db8::3"} {
			dst := "198.51.100.2"
			if strings.Contains(src, ":") {
				dst = "[2001:db8:1::2]"
			}
			for _, p := range []uint16{80, 443} {
				specs = append(specs, fmt.Sprintf("client/%s tcp %s:%d any", src, dst, p))
			}
			specs = append(specs, fmt.Sprintf("client/%s udp %s:53 any", src, dst))
		}
	}
	for _, src := range []string{"192.0.2.2", "192.0.2.3", "2001:db8::2", "2001:db8::3"} {
		dst := "192.0.2.1"
		if strings.Contains(src, ":") {
			dst = "[2001:db8::1]"
		}
		for _, p := range []uint16{22, 25, 53, 80, 113, 443, 2222, 5432, 6003, 8080} {
			specs = append(specs, fmt.Sprintf("client/%s tcp %s:%d any", src, dst, p))
		}
		for _, p := range []uint16{53, 123, 6000} {
			specs = append(specs, fmt.Sprintf("client/%s udp %s:%d any", src, dst, p))
		}
	}
	for _, dst := range []string{"192.0.2.2", "[2001:db8::2]"} {
		for _, p := range []uint16{25, 80} {
			specs = append(specs, fmt.Sprintf("server tcp %s:%d any", dst, p))
		}
		specs = append(specs, fmt.Sprintf("server udp %s:53 any", dst))
	}
	var checks []lab.Check
	for _, s := range specs {
		checks = append(checks, e.parseProbe(s))
	}
	return checks
}

func observe(t *testing.T, e *env, routed bool) map[string]lab.Outcome {
	t.Helper()
	// All probes go at once: the kernel's ICMP rate limit would turn some
	// rejects (ICMP port unreachable) into timeouts, by timing alone.
	for k, v := range map[string]string{"net/ipv4/icmp_ratelimit": "0", "net/ipv6/icmp/ratelimit": "0",
		"net/ipv4/icmp_msgs_per_sec": "100000", "net/ipv4/icmp_msgs_burst": "100000"} {
		if err := e.topo.Server.Sysctl(k, v); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out := map[string]lab.Outcome{}
	for _, r := range lab.RunChecks(ctx, diffProbes(e, routed)) {
		if r.Err != nil {
			t.Fatalf("%s: %v", r.Name, r.Err)
		}
		out[strings.TrimSuffix(r.Name, " any")] = r.Observed
	}
	return out
}

// observeAgain sends the probe named probe alone, waiting 2 s for an
// answer.
func observeAgain(t *testing.T, e *env, routed bool, probe string) lab.Outcome {
	t.Helper()
	for _, c := range diffProbes(e, routed) {
		if strings.TrimSuffix(c.Name, " any") != probe {
			continue
		}
		c.Probe.Wait = 2 * time.Second
		out, err := c.From.Send(context.Background(), c.Probe)
		if err != nil {
			t.Fatalf("%s: %v", c.Name, err)
		}
		return out
	}
	t.Fatalf("no probe %q", probe)
	return ""
}

func TestUFWDifferential(t *testing.T) {
	t.Parallel()
	if _, err := exec.LookPath("ufw"); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("ufw is not installed (scripts/setup.sh installs it)")
		}
		t.Skip("ufw is not installed")
	}
	_, err := os.Stat("/etc/ufw/applications.d/openssh-server")
	apps := err == nil
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("MOAT_UFWDIFF_SEED"); s != "" {
		_, _ = fmt.Sscan(s, &seed)
	}
	t.Logf("seed %d (MOAT_UFWDIFF_SEED to repeat)", seed)
	r := rand.New(rand.NewPCG(seed, 0))
	sets := make([][][]string, 4)
	for i := range sets {
		sets[i] = randomUFWRules(r, apps, i%2 == 1)
	}
	for i, rules := range sets {
		t.Run(fmt.Sprint(i), func(t *testing.T) {
			t.Parallel()
			routed := i%2 == 1
			ue := newEnv(t, "iptables", routed)
			sb := newUFWSandbox(t, ue.topo.Server)
			var script []string
			for _, rule := range rules {
				sb.ufw(rule...)
				script = append(script, "ufw "+strings.Join(rule, " "))
			}
			sb.ufw("--force", "enable")
			want := observe(t, ue, routed)
			tally := map[lab.Outcome]int{}
			for _, o := range want {
				tally[o]++
			}
			t.Logf("ufw's verdicts: %d open, %d refused, %d timeout (%d rules, routed %v)",
				tally[lab.Open], tally[lab.Refused], tally[lab.Timeout], len(rules), routed)

			var policy string
			for _, b := range backends {
				me := newEnv(t, b, routed)
				me.mustMoat("import", "ufw", "--from", filepath.Join(sb.dir, "etc-ufw"), "--defaults", filepath.Join(sb.dir, "default-ufw"), "--write")
				data, err := os.ReadFile(me.conf)
				if err != nil {
					t.Fatal(err)
				}
				policy = string(data)
				me.mustMoat("enable")
				got := observe(t, me, routed)
				for probe, w := range want {
					if got[probe] != w && (got[probe] == lab.Timeout || w == lab.Timeout) {
						// A timeout on one side may be a reply the loaded
						// machine delayed past DropWait (both families'
						// echoes at once, CI at load 18): both sides are
						// asked again, one at a time, with time to
						// answer. A dropped packet stays a timeout.
						w = observeAgain(t, ue, routed, probe)
						got[probe] = observeAgain(t, me, routed, probe)
					}
					if got[probe] != w {
						t.Errorf("%s: ufw %s, moat (%s) %s\nrules:\n  %s\nmoat policy:\n%s", probe, w, b, got[probe],
							strings.Join(script, "\n  "), policy)
					}
				}
			}
		})
	}
}
