package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// A rule put by hand into moat's rules while moat's own nft -f or
// iptables-restore runs (after the command's last look at the
// generation; a wrapper on the PATH holds the tool before it starts)
// is written over by the tool's commit: the chain is emptied and
// written again. Before, the command said "Rule added" and status was
// clean: the hand rule lost without a word. Now the command says which
// change another program made to moat's rules while its tool wrote
// them, and that it may be gone. nftables: a comment nft is given
// escaped (U+00A0) sends the change through nft -f; iptables: the
// wrapper itself (not iptables-nft's own tool) sends it through the
// restores.
func TestHandChangeWhileToolRuns(t *testing.T) {
	eachBackend(t, func(t *testing.T, b string) {
		e := newEnv(t, b, false)
		e.apply("default deny incoming\nallow 22/tcp\nallow 80/tcp\n")
		bin := t.TempDir()
		tool, edit := "nft", []string{"allow", "8080/tcp", "comment", "held\u00a0tool"}
		hand := []string{"nft", "insert", "rule", "inet", "moat", "input", "tcp", "dport", "80", "drop", "comment", "HAND"}
		chain := `chain "input" of table inet moat`
		if b == "iptables" {
			tool, edit = "iptables-restore", []string{"allow", "8080/tcp"}
			hand = []string{"iptables", "-I", "MOAT-INPUT", "1", "-p", "tcp", "--dport", "80", "-m", "comment", "--comment", "HAND", "-j", "DROP"}
			chain = `chain "MOAT-INPUT" of table ip filter`
		}
		real, err := exec.LookPath(tool)
		if err != nil {
			t.Fatal(err)
		}
		hold, started, goOn := filepath.Join(bin, "hold"), filepath.Join(bin, "started"), filepath.Join(bin, "go")
		script := "#!/bin/sh\nif [ -e " + hold + " ]; then rm -f " + hold + "; touch " + started +
			"; while [ ! -e " + goOn + " ]; do sleep 0.01; done; fi\nexec " + real + " \"$@\"\n"
		writeFile(t, filepath.Join(bin, tool), script)
		if err := os.Chmod(filepath.Join(bin, tool), 0o755); err != nil {
			t.Fatal(err)
		}
		writeFile(t, hold, "")
		type result struct {
			out []byte
			err error
		}
		done := make(chan result, 1)
		go func() {
			out, err := e.moatWithErr(bin, edit...)
			done <- result{out, err}
		}()
		deadline := time.Now().Add(60 * time.Second)
		for {
			if _, err := os.Stat(started); err == nil {
				break
			}
			if time.Now().After(deadline) {
				writeFile(t, goOn, "")
				r := <-done
				t.Fatalf("moat never ran %s: %v\n%s", tool, r.err, r.out)
			}
			time.Sleep(5 * time.Millisecond)
		}
		e.run("server", hand...)
		writeFile(t, goOn, "")
		r := <-done
		out := string(r.out)
		if r.err != nil {
			t.Fatalf("moat %s: %v\n%s", strings.Join(edit, " "), r.err, out)
		}
		e.expect(false, "client tcp 192.0.2.1:8080 open")
		// The hand rule is gone (the chain was written over): the
		// command said so, naming the chain and who changed it.
		if !strings.Contains(out, "another program changed moat's rules while moat's "+strings.Replace(tool, "nft", "nft -f", 1)+" wrote them") || !strings.Contains(out, chain) {
			t.Errorf("the hand rule written over is not said:\n%s", out)
		}
		e.expect(false, "client tcp 192.0.2.1:80 open")
	})
}
