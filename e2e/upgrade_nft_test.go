package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/moat-fw/moat/internal/nft"
	"github.com/moat-fw/moat/internal/policy"
	"github.com/moat-fw/moat/internal/ruleset"
)

// TestUpgradeEarlierLayoutNftNoFalseDrift: after an upgrade on nftables,
// the kernel holds moat's table as the earlier moat loaded it (every
// built-in first, none behind a gate rule in a chain of its own) and the
// old fingerprint record cannot vouch for it. Status must say so, not
// report a change by hand; the next edit rewrites whole; a real hand
// change on top of the earlier layout is still reported.
func TestUpgradeEarlierLayoutNftNoFalseDrift(t *testing.T) {
	e := onBackend(t, "nftables")
	const pol = "default deny incoming\nallow 22/tcp\nallow 80/tcp\nallow 53/udp\n"
	e.apply(pol)
	earlier := func(text string) {
		t.Helper()
		p, err := policy.NewDocument(e.conf, []byte(text)).Policy(nil)
		if err != nil {
			t.Fatal(err)
		}
		script, err := (&nft.Backend{}).Script(ruleset.CompileEarlierOrder(p))
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(script, "input_icmp") {
			t.Fatalf("the earlier layout has gated chains:\n%s", script)
		}
		f := filepath.Join(e.dir, "earlier.nft")
		writeFile(t, f, script)
		e.run("server", "nft", "delete", "table", "inet", nft.TableName)
		e.run("server", "nft", "-f", f)
		// The earlier moat's record: it cannot vouch for this kernel.
		e.removeFingerprintIfAny()
	}
	earlier(pol)
	if out := e.run("server", "nft", "list", "table", "inet", nft.TableName); strings.Contains(out, "input_icmp") {
		t.Fatalf("the earlier layout was not loaded:\n%s", out)
	}
	out := e.mustMoat("status")
	if strings.Contains(out, "changed outside moat") || !strings.Contains(out, "earlier version of moat") {
		t.Errorf("status after an upgrade:\n%s", out)
	}
	e.expect(false, "client tcp 192.0.2.1:80 open", "client tcp [2001:db8::1]:22 open", "client tcp 192.0.2.1:443 timeout")

	// The next edit rewrites whole, into this version's layout.
	const pol2 = pol + "allow 443/tcp\n"
	if err := os.WriteFile(e.conf, []byte(pol2), 0o644); err != nil {
		t.Fatal(err)
	}
	out = e.mustMoat("reload")
	if strings.Contains(out, "changed outside moat") || !strings.Contains(out, "earlier version of moat") {
		t.Errorf("the first change after an upgrade:\n%s", out)
	}
	if out := e.run("server", "nft", "list", "table", "inet", nft.TableName); !strings.Contains(out, "input_icmp") {
		t.Errorf("the change did not load this version's layout:\n%s", out)
	}
	if out := e.mustMoat("status"); strings.Contains(out, "outside moat") || strings.Contains(out, "earlier version") {
		t.Errorf("status after the change rewrote moat's table:\n%s", out)
	}
	e.expect(false, "client tcp 192.0.2.1:443 open", "client tcp [2001:db8::1]:443 open", "client tcp 192.0.2.1:8080 timeout")

	// A hand change on top of the earlier layout is still one.
	earlier(pol2)
	e.run("server", "nft", "insert", "rule", "inet", nft.TableName, "input", "tcp", "dport", "8080", "accept")
	if out := e.mustMoat("status"); !strings.Contains(out, "changed outside moat") || strings.Contains(out, "earlier version") {
		t.Errorf("status does not see a rule added by hand:\n%s", out)
	}
	e.expect(false, "client tcp 192.0.2.1:8080 open")
}
