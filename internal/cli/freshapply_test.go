package cli

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/moat-fw/moat/internal/execrun"
	"github.com/moat-fw/moat/internal/ipt"
	"github.com/moat-fw/moat/internal/labtest"
	"github.com/moat-fw/moat/internal/setstore"
	"github.com/moat-fw/moat/internal/statedir"
)

// A first iptables apply (none of moat's chains in the kernel, the
// chains written whole) is proven by the generations as a whole nftables
// commit is: the fingerprint is recorded without the full comparison
// (which, at 100,000 networks, read every set back and loaded the
// policy again into a scratch namespace: half of the command's memory),
// and it is the fingerprint the kernel gives. The proof needs both: a
// rule inserted by hand after the apply moves the generation once more,
// and a chain of moat's name made by hand before it survives the apply;
// either way the rules are compared in full, the difference is found
// and nothing is recorded.
func TestFreshIptApplyFingerprintWithoutCompare(t *testing.T) {
	needRootAnd(t, "iptables-restore", "ipset")
	const text = "default deny incoming\nallow 22/tcp\ndeny from 192.0.2.7\ndeny from 198.51.100.0/24\ndeny from 2001:db8::/64\n"
	for _, tc := range []struct {
		name         string
		before, hand []string // iptables commands before the apply, and after it
		record       bool
	}{
		{name: "fresh", record: true},
		{name: "rule inserted after the apply", hand: []string{"-I", "MOAT-INPUT", "1", "-p", "tcp", "--dport", "6000", "-j", "RETURN"}},
		{name: "chain made before the apply", before: []string{"-N", "MOAT-HAND"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ns := labtest.NS(t, "moatfresh")
			dir := t.TempDir()
			a, rs := quietApp(t, dir, text)
			st := appliedState{Known: true, Backend: "iptables", Policy: text, Time: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)}
			compares := 0
			driftReasonHook = func() { compares++ }
			t.Cleanup(func() { driftReasonHook = nil })
			var want string
			err := ns.Do(func() error {
				b := ipt.New()
				b.Elements = setstore.Dir{Path: dir, Prefix: "ipset."}
				if !b.InNftables() {
					t.Skip("the iptables tools are not the nf_tables kind here")
				}
				if tc.before != nil {
					if _, err := execrun.Exec(context.Background(), nil, "iptables", append([]string{"-w", "5"}, tc.before...)...); err != nil {
						return err
					}
				}
				if err := b.Apply(context.Background(), rs); err != nil {
					return err
				}
				if tc.hand != nil {
					if _, err := execrun.Exec(context.Background(), nil, "iptables", append([]string{"-w", "5"}, tc.hand...)...); err != nil {
						return err
					}
				}
				a.recordFingerprint(context.Background(), b, st, verifiedGen{})
				// The kernel's fingerprint, read whole by a backend that
				// loaded nothing.
				k, err := a.kernelFingerprint(context.Background(), ipt.New())
				want = k.Fingerprint
				return err
			})
			if err != nil {
				t.Fatal(err)
			}
			data, err := statedir.ReadFile(dir, fingerprintFile)
			if !tc.record {
				if err == nil {
					t.Errorf("a fingerprint was recorded: %s", data)
				}
				if compares != 1 {
					t.Errorf("%d full comparisons, want 1", compares)
				}
				return
			}
			if err != nil {
				t.Fatalf("no fingerprint recorded: %v", err)
			}
			if compares != 0 {
				t.Errorf("%d full comparisons after a first apply, want none", compares)
			}
			var rec kernelRecord
			if err := json.Unmarshal(data, &rec); err != nil {
				t.Fatal(err)
			}
			if rec.Fingerprint != want || want == "" {
				t.Errorf("recorded fingerprint %q, the kernel gives %q", rec.Fingerprint, want)
			}
		})
	}
}
