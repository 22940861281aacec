package packaging

import (
	"context"
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/moat-fw/moat/internal/labtest"
)

// The purge's rule removal (postrm's purge_rules, run alone in a
// namespace this test made: never the rest of postrm, which deletes
// /etc/moat) leaves no set of moat's, whatever the blocklists are called:
// a blocklist named like an early list ("early4": its sets are
// moat-bl4_early4 and moat-bl6_early4) was taken for one, destroyed
// first while an early list still held it (refused), and never tried
// again.
func TestPostrmPurgesEarlyListsAndOddNames(t *testing.T) {
	script, err := os.ReadFile("deb/postrm")
	if err != nil {
		t.Fatal(err)
	}
	fn := regexp.MustCompile(`(?ms)^purge_rules\(\) \{\n.*?^\}\n`).Find(script)
	if fn == nil {
		t.Fatal("deb/postrm has no purge_rules function")
	}
	ctx := context.Background()
	ns := labtest.NS(t, "moatpostrm")
	run := labtest.Runner(ns)
	sets := "create moat-ban4 hash:ip\ncreate moat-bl4_early4 hash:net\ncreate moat-bl4_xearly6 hash:net\n" +
		"create moat-ban6 hash:ip family inet6\ncreate moat-bl6_early4 hash:net family inet6\n" +
		"create moat-early4 list:set\nadd moat-early4 moat-ban4\nadd moat-early4 moat-bl4_early4\nadd moat-early4 moat-bl4_xearly6\n" +
		"create moat-early6 list:set\nadd moat-early6 moat-ban6\nadd moat-early6 moat-bl6_early4\n" +
		"create moatnew-early4 list:set\nadd moatnew-early4 moat-bl4_early4\n" +
		"create moatchkab1-early6 list:set\nadd moatchkab1-early6 moat-bl6_early4\n"
	if out, err := run(ctx, []byte(sets), "ipset", "restore"); err != nil {
		t.Fatalf("ipset restore: %v\n%s", err, out)
	}
	for _, r := range []struct{ prog, list string }{{"iptables", "moat-early4"}, {"ip6tables", "moat-early6"}} {
		rules := "*raw\n:MOAT-PREROUTING - [0:0]\n-A PREROUTING -m set --match-set " + r.list + " src -j MOAT-PREROUTING\n" +
			"-A MOAT-PREROUTING -j DROP\nCOMMIT\n"
		if out, err := run(ctx, []byte(rules), r.prog+"-restore", "--noflush"); err != nil {
			t.Fatalf("%s-restore: %v\n%s", r.prog, err, out)
		}
	}
	if out, err := run(ctx, nil, "sh", "-c", string(fn)+"purge_rules\n"); err != nil {
		t.Fatalf("purge_rules: %v\n%s", err, out)
	}
	out, err := run(ctx, nil, "ipset", "list", "-n")
	if err != nil {
		t.Fatal(err)
	}
	if left := strings.TrimSpace(string(out)); left != "" {
		t.Errorf("the purge left sets:\n%s", left)
	}
	for _, prog := range []string{"iptables-save", "ip6tables-save"} {
		if out, _ := run(ctx, nil, prog); strings.Contains(string(out), "MOAT") {
			t.Errorf("the purge left rules (%s):\n%s", prog, out)
		}
	}
}
