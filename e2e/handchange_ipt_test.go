package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestHandChangeDuringCommand for iptables-nft: a rule inserted by hand
// while moat's restores run (between the IPv4 and the IPv6 restore, or
// after the last one, before the fingerprint is read) moves the nftables
// generation once more than moat's own transactions: the fingerprint taken
// then must not vouch for it.
func TestIptablesHandChangeDuringCommand(t *testing.T) {
	t.Parallel()
	requireBackend(t, "iptables")
	for _, c := range []struct {
		name, hand, probe string
		after             bool // the hand change follows the real restore
	}{
		// Before the real ip6tables-restore: between the two families.
		{"v4", "iptables -I MOAT-INPUT 1 -p tcp --dport 80 -j DROP", "client tcp 192.0.2.1:80", false},
		// After the last restore, before the fingerprint is read.
		{"v6", "ip6tables -I MOAT-INPUT 1 -p tcp --dport 80 -j DROP", "client tcp [2001:db8::1]:80", true},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, "iptables", false)
			e.apply("default deny incoming\nallow 22/tcp\nallow 80/tcp\n")
			real, err := exec.LookPath("ip6tables-restore")
			if err != nil {
				t.Fatal(err)
			}
			bin := t.TempDir()
			once := filepath.Join(bin, "once")
			script := "#!/bin/sh\ncase \" $* \" in *\" --test \"*) exec " + real + " \"$@\";; esac\n" +
				"if mkdir " + once + " 2>/dev/null; then\n"
			if c.after {
				script += real + " \"$@\"; rc=$?\n" + c.hand + "\nexit $rc\n"
			} else {
				script += c.hand + "\n"
			}
			script += "fi\nexec " + real + " \"$@\"\n"
			writeFile(t, filepath.Join(bin, "ip6tables-restore"), script)
			if err := os.Chmod(filepath.Join(bin, "ip6tables-restore"), 0o755); err != nil {
				t.Fatal(err)
			}
			e.moatWith(bin, "allow", "8080/tcp")
			if _, err := os.Stat(once); err != nil {
				t.Fatal("the command ran no ip6tables-restore: the hand change was not made during it")
			}
			e.expect(false, c.probe+" timeout", "client tcp 192.0.2.1:8080 open")
			if out := e.mustMoat("status"); !strings.Contains(out, "changed outside moat") {
				t.Errorf("status does not see the rule inserted during the command:\n%s", out)
			}
			e.mustMoat("allow", "8081/tcp")
			e.expect(false, c.probe+" open")
		})
	}
}

// With iptables-nft and no policy ipset, an unchanged generation vouches
// for moat's chains and the protected sets' listings (two `ipset list`)
// for the rest: the check before status starts no iptables-save of its
// own. An address added by hand to moat-protect4 (no commit) is still
// seen: the check then reads the fingerprint whole.
func TestIptablesProtectedSetsVouch(t *testing.T) {
	e := onBackend(t, "iptables")
	e.apply("default deny incoming\nallow 22/tcp\n")
	if rec := readKernelRecord(t, e); !rec.HasGeneration || !rec.Sets || rec.Protected == "" {
		t.Fatalf("the record of a policy without policy ipsets has no hash of the protected sets: %+v", rec)
	}
	real, err := exec.LookPath("iptables-save")
	if err != nil {
		t.Fatal(err)
	}
	bin := t.TempDir()
	log := filepath.Join(bin, "calls")
	writeFile(t, filepath.Join(bin, "iptables-save"), "#!/bin/sh\necho \"iptables-save $*\" >> "+log+"\nexec "+real+" \"$@\"\n")
	if err := os.Chmod(filepath.Join(bin, "iptables-save"), 0o755); err != nil {
		t.Fatal(err)
	}
	plainSaves := func() (int, string) {
		_ = os.Remove(log)
		out := e.moatWith(bin, "status")
		data, _ := os.ReadFile(log)
		return strings.Count(string(data), "iptables-save \n"), out
	}
	// status itself reads the rules once to show them.
	clean, _ := plainSaves()
	if clean > 1 {
		t.Errorf("the check before status read iptables-save although the generation and the protected sets vouch (%d runs)", clean)
	}
	e.run("server", "ipset", "add", "moat-protect4", "192.0.2.2")
	n, out := plainSaves()
	if n <= clean || !strings.Contains(out, "protect4 holds other addresses than moat loaded") {
		t.Errorf("an address added by hand to moat-protect4: %d iptables-save runs (clean: %d), status:\n%s", n, clean, out)
	}
}
