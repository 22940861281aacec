package e2e

import (
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// TestKillDuringIpsetFill: a first `moat enable` on iptables killed
// (SIGKILL) while it fills a policy set's temporary ipset over netlink,
// part of the members in it. moat is stopped (SIGSTOP) as soon as the
// temporary set holds members, the count read while it is stopped, and
// killed only when the set is partly filled (else the run is tried
// again): the state the test is about is checked, not hoped for. The
// next `moat enable`, of other networks, destroys the temporary set and
// loads the set whole: no temporary set is left, every set holds every
// network and none of the killed run's, status
// sees no drift, and real packets from listed and unlisted sources
// (IPv4 and IPv6) are dropped and let through.
func TestKillDuringIpsetFill(t *testing.T) {
	e := onBackend(t, "iptables")
	const n = 25000
	policy := func(v4, v6 string) string {
		var b strings.Builder
		b.WriteString("default deny incoming\nallow 22/tcp\ndeny from 192.0.2.3\ndeny from 2001:db8::3\n")
		for i := 0; i < n; i++ {
			fmt.Fprintf(&b, "deny from %s.%d.%d\ndeny from %s:%x::/64\n", v4, i>>7&255, 2*(i&127), v6, 2*i)
		}
		return b.String() + "allow 80/tcp\n"
	}
	writeFile(t, e.conf, policy("198.18", "2001:db8:7"))
	killed := false
	for try := 0; try < 5 && !killed; try++ {
		cmd := exec.Command(moatBin, "--config", e.conf, "--backend", "iptables", "--state-dir", e.stateDir(), "enable", "--force")
		if err := e.topo.Server.Start(cmd); err != nil {
			t.Fatal(err)
		}
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		// A test stopped half way leaves no stopped moat behind.
		t.Cleanup(func() { _ = cmd.Process.Kill(); <-done })
		stopped, finished := false, false
		for !stopped && !finished {
			select {
			case <-done:
				finished = true // no temporary set seen: again
				continue
			default:
			}
			if name, count := e.tmpSet(); count > 0 {
				if err := cmd.Process.Signal(syscall.SIGSTOP); err != nil {
					t.Fatal(err)
				}
				stopped = true
				if _, count = e.tmpSetNamed(name); count > 0 && count < n {
					t.Logf("try %d: killed with %d of %d members in %s", try, count, n, name)
					killed = true
				}
			}
		}
		_ = cmd.Process.Kill()
		<-done
		if !killed {
			// Filled before it stopped: repaired, then start again
			// from no chains.
			e.mustMoat("enable", "--force")
			e.mustMoat("disable")
		}
	}
	if !killed {
		t.Fatal("never killed with a temporary set partly filled")
	}
	// Other networks: what the killed run put in its temporary set
	// must not survive into the set.
	writeFile(t, e.conf, policy("198.19", "2001:db8:8"))
	e.mustMoat("enable", "--force")
	if name, count := e.tmpSet(); name != "" {
		t.Fatalf("a temporary set is left after the next enable: %s (%d members)", name, count)
	}
	if sets := e.run("server", "ipset", "list", "-t"); strings.Count(sets, "Number of entries: "+strconv.Itoa(n+1)+"\n") != 2 {
		t.Fatalf("the policy sets do not each hold %d networks:\n%s", n+1, sets)
	}
	if sets := e.run("server", "ipset", "list"); strings.Contains(sets, "198.18.") || strings.Contains(sets, "2001:db8:7:") {
		t.Fatal("networks of the killed run's policy are in the sets")
	}
	if st := e.mustMoat("status"); strings.Contains(st, "outside moat") {
		t.Errorf("status after the repair:\n%s", st)
	}
	e.expect(false, "client/192.0.2.3 tcp 192.0.2.1:80 timeout", "client/2001:db8::3 tcp [2001:db8::1]:80 timeout",
		"client/192.0.2.4 tcp 192.0.2.1:80 open", "client/2001:db8::4 tcp [2001:db8::1]:80 open")
}

// tmpSet is a temporary ipset moat fills (moatnew-...) and its number
// of members ("", 0: none).
func (e *env) tmpSet() (string, int) {
	e.t.Helper()
	for _, name := range strings.Split(e.run("server", "ipset", "list", "-n"), "\n") {
		if strings.HasPrefix(name, "moatnew-") {
			return e.tmpSetNamed(name)
		}
	}
	return "", 0
}

func (e *env) tmpSetNamed(name string) (string, int) {
	e.t.Helper()
	out, err := e.topo.Server.Run(e.t.Context(), "ipset", "list", "-t", name)
	if err != nil {
		return "", 0 // renamed or swapped away meanwhile
	}
	for _, l := range strings.Split(string(out), "\n") {
		if v, ok := strings.CutPrefix(l, "Number of entries: "); ok {
			c, _ := strconv.Atoi(strings.TrimSpace(v))
			return name, c
		}
	}
	return name, 0
}
