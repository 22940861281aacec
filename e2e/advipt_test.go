package e2e

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestAdvDriftUnreadableIsNoProof: a comparison of moat's rules that
// cannot be made is no proof that nothing changed. A rule opening port
// 80 is inserted by hand into MOAT-INPUT together with an nftables rule
// iptables-save cannot print (in a chain of its own, which moat's
// fingerprint leaves out), so that every iptables-save fails. The next
// command fails (it cannot read moat's chains), but its drift check took
// the failed comparison for "no difference" and recorded the kernel's
// fingerprint, hand rule included, as moat's own: once the unreadable
// rule was deleted, status said nothing and the port stayed open through
// every later command. The comparison that fails must leave the record
// as it was (the next command compares again) and make the next apply
// rewrite moat's rules whole.
func TestAdvDriftUnreadableIsNoProof(t *testing.T) {
	e := onBackend(t, "iptables")
	e.apply("default deny incoming\nallow 22/tcp\n")
	e.expect(false, "client tcp 192.0.2.1:80 timeout")
	e.run("server", "iptables", "-I", "MOAT-INPUT", "1", "-p", "tcp", "--dport", "80", "-j", "RETURN")
	e.run("server", "nft", "add", "chain", "ip", "filter", "ADVIPT")
	e.run("server", "nft", "add", "rule", "ip", "filter", "ADVIPT", "ip", "length", "100", "accept")
	if out, err := e.moat("deny", "from", "192.0.2.98"); err == nil {
		t.Logf("the command with iptables-save failing succeeded:\n%s", out)
	}
	e.run("server", "nft", "flush", "chain", "ip", "filter", "ADVIPT")
	e.run("server", "nft", "delete", "chain", "ip", "filter", "ADVIPT")
	e.expect(false, "client tcp 192.0.2.1:80 open")
	if out := e.mustMoat("status"); !strings.Contains(out, "changed outside moat") {
		t.Errorf("status does not see the rule inserted by hand while iptables-save could not read the table:\n%s", out)
	}
	e.mustMoat("deny", "from", "192.0.2.98")
	e.expect(false, "client tcp 192.0.2.1:80 timeout", "client tcp 192.0.2.1:22 open")
	e.expectStatusClean("status after the repair")
}

// TestAdvInPlaceUnreadableIsNoProof: the same for the comparison rule by
// rule with the applied policy loaded into a scratch namespace, which
// alone sees a rule changed in place that kept its tag and verdict. The
// allow-22 rule is changed by hand to allow port 80 instead (its tag and
// verdict kept); the next command's scratch load fails (an
// iptables-restore that refuses to run outside the server's namespace).
// The comparison that could not be made was taken for "no difference"
// and the fingerprint, hand rule in it, recorded as moat's: status then
// never reported it, and port 80 stayed open.
func TestAdvInPlaceUnreadableIsNoProof(t *testing.T) {
	e := onBackend(t, "iptables")
	list := e.newFile("bl.txt", "203.0.113.0/25\n")
	e.apply("default deny incoming\nallow 22/tcp\nblocklist bl file " + list + "\n")
	e.expect(false, "client tcp 192.0.2.1:80 timeout", "client tcp 192.0.2.1:22 open")
	var n int
	var tag string
	for i, l := range strings.Split(e.run("server", "iptables", "-S", "MOAT-INPUT"), "\n") {
		if strings.Contains(l, "--dport 22 ") {
			n, tag = i, CommentOf(t, l)
		}
	}
	if n == 0 {
		t.Fatal("no allow-22 rule in MOAT-INPUT")
	}
	e.run("server", "iptables", "-R", "MOAT-INPUT", strconv.Itoa(n), "-p", "tcp", "-m", "tcp", "--dport", "80", "-m", "comment", "--comment", tag, "-j", "RETURN")
	e.expect(false, "client tcp 192.0.2.1:80 open", "client tcp 192.0.2.1:22 timeout")
	ns := strings.TrimSpace(e.run("server", "readlink", "/proc/self/ns/net"))
	bin := t.TempDir()
	for _, prog := range []string{"iptables-restore", "ip6tables-restore"} {
		real, err := exec.LookPath(prog)
		if err != nil {
			t.Fatal(err)
		}
		writeFile(t, filepath.Join(bin, prog), "#!/bin/sh\n[ \"$(readlink /proc/self/ns/net)\" = '"+ns+"' ] || exit 1\nexec "+real+" \"$@\"\n")
		if err := os.Chmod(filepath.Join(bin, prog), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	// A change of the list alone: moat's chains are not rewritten.
	writeFile(t, list, "203.0.113.0/25\n203.0.113.128/26\n")
	out, _ := e.moatWithErr(bin, "blocklist", "update", "bl")
	t.Logf("the command whose scratch load failed:\n%s", out)
	if out := e.mustMoat("status"); !strings.Contains(out, "changed outside moat") && !strings.Contains(e.run("server", "iptables", "-S", "MOAT-INPUT"), "--dport 22 ") {
		t.Errorf("the rule changed in place by hand is neither reported nor repaired:\n%s", out)
	}
	writeFile(t, list, "203.0.113.0/25\n")
	e.mustMoat("blocklist", "update", "bl")
	e.expect(false, "client tcp 192.0.2.1:80 timeout", "client tcp 192.0.2.1:22 open")
}

// CommentOf is the comment of an iptables -S line.
func CommentOf(t *testing.T, line string) string {
	t.Helper()
	_, rest, ok := strings.Cut(line, "--comment ")
	if !ok {
		t.Fatalf("no comment in %q", line)
	}
	c, _, _ := strings.Cut(rest, " ")
	return strings.Trim(c, `"`)
}

// TestAdvStatusUnreadableProtectedSet: status whose comparison of a
// protected set cannot be made does not say the kernel holds what moat
// applied. An address is added by hand to moat-protect4 (spared every
// ban) and `ipset list moat-protect4` fails: status said in sync,
// nothing changed outside moat.
func TestAdvStatusUnreadableProtectedSet(t *testing.T) {
	e := onBackend(t, "iptables")
	e.apply("default deny incoming\nallow 22/tcp\n")
	e.run("server", "ipset", "add", "moat-protect4", "192.0.2.2")
	real, err := exec.LookPath("ipset")
	if err != nil {
		t.Fatal(err)
	}
	bin := t.TempDir()
	writeFile(t, filepath.Join(bin, "ipset"), "#!/bin/sh\n[ \"$*\" = 'list moat-protect4' ] && exit 1\nexec "+real+" \"$@\"\n")
	if err := os.Chmod(filepath.Join(bin, "ipset"), 0o755); err != nil {
		t.Fatal(err)
	}
	out, err := e.moatWithErr(bin, "status", "--json")
	if err != nil {
		t.Fatalf("status: %v\n%s", err, out)
	}
	var st struct {
		InSync bool `json:"in_sync"`
	}
	if err := json.Unmarshal(out, &st); err != nil {
		t.Fatalf("status --json: %v\n%s", err, out)
	}
	if st.InSync {
		t.Errorf("status says in sync although the protected set could not be compared:\n%s", out)
	}
	text, _ := e.moatWithErr(bin, "status")
	if !strings.Contains(string(text), "could not be compared") {
		t.Errorf("status does not say the comparison could not be made:\n%s", text)
	}
}
