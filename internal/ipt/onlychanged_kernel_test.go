package ipt

import (
	"context"
	"slices"
	"strings"
	"testing"

	"github.com/moat-fw/moat/internal/execrun"
	"github.com/moat-fw/moat/internal/labtest"
	"github.com/moat-fw/moat/internal/policy"
	"github.com/moat-fw/moat/internal/setstore"
)

// A run of edits on iptables-nft, each by a Backend of its own on one
// state directory (one command each, the chains' state kept in
// chainCacheFile): each transaction flushes only the chains whose rules
// changed and MOAT-GEN, and iptables-save then lists in both families
// what a whole rewrite through iptables-restore lists in a namespace of
// its own. A rule added by hand to a chain the next edit does not
// change (MOAT-OUTPUT in IPv4, MOAT-FORWARD in IPv6) moves the
// generation: that edit rewrites every chain, and the hand rule is gone.
func TestKernelRulesNetlinkOnlyChanged(t *testing.T) {
	nsMoat, nsRef := labtest.NS(t, "moatonlych"), labtest.NS(t, "moatonlyref")
	ctx := context.Background()
	dir, elems := t.TempDir(), t.TempDir()
	newBackend := func() *Backend {
		return &Backend{Run: execrun.Exec, Netlink: true, IpsetNetlink: true, StateDir: dir, KeyDir: dir,
			Elements: setstore.Dir{Path: elems, Prefix: "ipt-set."}}
	}
	var flushed []string
	oldSend := sendRules
	t.Cleanup(func() { sendRules = oldSend })
	sendRules = func(txn *rulesTxn, gen uint32) error {
		for _, op := range txn.ops {
			if rest, ok := strings.CutPrefix(op, "ip "); ok && strings.HasPrefix(rest, "flush ") {
				flushed = append(flushed, "ip "+strings.TrimPrefix(rest, "flush "))
			} else if rest, ok := strings.CutPrefix(op, "ip6 "); ok && strings.HasPrefix(rest, "flush ") {
				flushed = append(flushed, "ip6 "+strings.TrimPrefix(rest, "flush "))
			}
		}
		return oldSend(txn, gen)
	}
	head := "default deny incoming\nallow 22/tcp\ndeny from 198.51.100.0/24\ndeny from 2001:db8:5::/48\n"
	every := []string{"ip filter MOAT-FORWARD", "ip filter MOAT-GEN", "ip filter MOAT-INPUT", "ip filter MOAT-OUTPUT", "ip raw MOAT-PREROUTING",
		"ip6 filter MOAT-FORWARD", "ip6 filter MOAT-GEN", "ip6 filter MOAT-INPUT", "ip6 filter MOAT-OUTPUT", "ip6 raw MOAT-PREROUTING"}
	input := []string{"ip filter MOAT-GEN", "ip filter MOAT-INPUT", "ip6 filter MOAT-GEN", "ip6 filter MOAT-INPUT"}
	for i, e := range []struct {
		text string
		hand [][]string // run by hand before the edit
		want []string   // chains flushed
	}{
		{text: head, want: every},
		{text: head + "allow 8080/tcp\n", want: input},
		{text: head, want: input},
		{text: head + "deny out 25/tcp\n", want: []string{"ip filter MOAT-GEN", "ip filter MOAT-OUTPUT", "ip6 filter MOAT-GEN", "ip6 filter MOAT-OUTPUT"}},
		{text: head + "deny out 25/tcp\nallow 8080/tcp\n", want: input,
			hand: [][]string{{"iptables", "-A", "MOAT-OUTPUT", "-p", "tcp", "--dport", "443", "-j", "ACCEPT"}}},
		{text: head + "deny out 25/tcp\n", want: input},
		{text: head + "deny out 25/tcp\nallow 8080/tcp\n", want: input,
			hand: [][]string{{"ip6tables", "-I", "MOAT-FORWARD", "1", "-j", "ACCEPT"}}},
		{text: head + "deny out 25/tcp\nallow 8080/tcp\nallow 8081/tcp\n", want: input},
		// A policy set's members and a rule together (the set's
		// "changing" mark committed first, then the transaction), and the
		// members alone (MOAT-GEN's record): not counted, compared.
		{text: head + "deny from 192.0.2.0/24\ndeny from 203.0.113.0/24\n"},
		{text: head + "deny from 192.0.2.0/24\nallow 8080/tcp\n"},
		{text: head + "deny from 203.0.113.0/24\nallow 8080/tcp\n"},
		{text: head + "deny from 203.0.113.0/24\nallow 8080/tcp\nallow 8081/tcp\n", want: input},
	} {
		rs := compile(t, e.text)
		err := nsMoat.Do(func() error {
			if legacyTables() {
				t.Skip("legacy x_tables loaded here")
			}
			for _, argv := range e.hand {
				if out, err := execrun.Exec(ctx, nil, argv[0], argv[1:]...); err != nil {
					t.Fatalf("%v: %v %s", argv, err, out)
				}
			}
			flushed = nil
			b := newBackend()
			if err := b.Apply(ctx, rs); err != nil {
				return err
			}
			want := e.want
			if len(e.hand) > 0 {
				want = every // the generation moved: read anew, written whole
			}
			slices.Sort(flushed)
			if want != nil && !slices.Equal(flushed, want) {
				t.Errorf("edit %d: flushed %q, want %q", i, flushed, want)
			}
			// The command's fingerprint afterwards: the chains' state for
			// the next one.
			fp, err := b.Fingerprint(ctx)
			if err != nil {
				return err
			}
			if again, err := newBackend().Fingerprint(ctx); err != nil || again != fp {
				t.Errorf("edit %d: fingerprint %s, read anew %s (%v)", i, fp, again, err)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		ours := map[policy.Family][]string{}
		if err := nsMoat.Do(func() error { ours = moatLines(t, ctx); return nil }); err != nil {
			t.Fatal(err)
		}
		var theirs map[policy.Family][]string
		err = nsRef.Do(func() error {
			oldEnc := newXtEncoder
			newXtEncoder = func() (xtEncoder, error) { return nil, errXtUnsupported }
			defer func() { newXtEncoder = oldEnc }()
			if err := (&Backend{Run: execrun.Exec, Netlink: true, IpsetNetlink: true, Full: true}).Apply(ctx, rs); err != nil {
				return err
			}
			theirs = moatLines(t, ctx)
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if !equalLines(ours, theirs) {
			t.Errorf("edit %d: iptables-save of the edits:\n%s\nof a whole restore:\n%s", i,
				strings.Join(ours[policy.FamilyV4], "\n")+"\n"+strings.Join(ours[policy.FamilyV6], "\n"),
				strings.Join(theirs[policy.FamilyV4], "\n")+"\n"+strings.Join(theirs[policy.FamilyV6], "\n"))
		}
	}
}
