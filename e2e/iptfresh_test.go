package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// The iptables twins of TestHandChangeAfterWholeCommit and
// TestHandElementAfterWholeCommit. A first enable's fingerprint is taken
// from what moat loaded, without comparing the kernel with the policy
// in full, because the generations prove that only moat's own restores
// wrote its chains. A rule inserted by hand right after the last restore
// moves the generation once more: compared in full, it is drift. An
// address added by hand to a policy ipset moves no generation: the
// record covers the sets, so the next command reads their members, and
// it is drift all the same (named by status, taken out by the next
// change; real packets either side).
func TestIptHandChangeAfterFirstEnable(t *testing.T) {
	t.Parallel()
	for _, what := range []string{"rule", "element"} {
		t.Run(what, func(t *testing.T) {
			t.Parallel()
			requireBackend(t, "iptables")
			e := newEnv(t, "iptables", false)
			real, err := exec.LookPath("ip6tables-restore")
			if err != nil {
				t.Fatal(err)
			}
			hand := "iptables -w 5 -I MOAT-INPUT 1 -s 192.0.2.2 -j DROP || exit 9\n"
			if what == "element" {
				hand = "set=$(ipset list -n | grep 'deny_src4') && ipset add \"$set\" 192.0.2.2 || exit 9\n"
			}
			bin := t.TempDir()
			// The last restore of the enable (IPv6's, after IPv4's), not
			// the check's (--test): the hand change follows it at once.
			script := "#!/bin/sh\ncase \" $* \" in *' --test '*) exec " + real + " \"$@\";; esac\n" +
				"if mkdir " + filepath.Join(bin, "once") + " 2>/dev/null; then\n" +
				real + " \"$@\"; rc=$?\n" + hand + "exit $rc\nfi\nexec " + real + " \"$@\"\n"
			writeFile(t, filepath.Join(bin, "ip6tables-restore"), script)
			if err := os.Chmod(filepath.Join(bin, "ip6tables-restore"), 0o755); err != nil {
				t.Fatal(err)
			}
			writeFile(t, e.conf, "default allow incoming\ndeny from 192.0.2.3\ndeny from 192.0.2.9\ndeny from 2001:db8::3\n")
			e.moatWith(bin, "enable")
			if _, err := os.Stat(filepath.Join(bin, "once")); err != nil {
				t.Fatal("the enable ran no ip6tables-restore: the hand change was not made during it")
			}
			expectHandDropRepaired(t, e, "the "+what+" added right after the first enable")
		})
	}
}
