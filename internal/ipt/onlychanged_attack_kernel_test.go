package ipt

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/moat-fw/moat/internal/execrun"
	"github.com/moat-fw/moat/internal/labtest"
	"github.com/moat-fw/moat/internal/nft"
	"github.com/moat-fw/moat/internal/policy"
	"github.com/moat-fw/moat/internal/setstore"
)

// The per-chain sums (onlyChanged) against hand changes to each of
// moat's chains the next edit does not change, in either family, raw
// and filter, and MOAT-GEN: made before the command, between its read
// and its transaction (with and without a drift check vouching for the
// read), and after a moat killed between its commit and the save of
// ipt-chains.json (the file left at an older generation). Each edit
// adds one rule to MOAT-INPUT only, so the shortened transaction would
// leave every chain changed by hand out. Never is a hand rule kept in
// silence: before the command, or with the file stale, the state is read
// anew and every chain rewritten (the hand rule gone, iptables-save as a
// whole restore's); between read and commit, the kernel refuses the
// transaction: under a drift vouch nothing is written
// (ErrChangedSinceCheck, the hand rule and the old rules stay), without
// one the change is restored, and a hand rule it leaves (raw's, whose
// section it does not write again) moved the generation past LastApply's,
// so the command compares moat's rules in full.
func TestKernelOnlyChangedHandChanges(t *testing.T) {
	nsMoat, nsRef := labtest.NS(t, "moatocatk"), labtest.NS(t, "moatocatkref")
	ctx := context.Background()
	head := "default deny incoming\nallow 22/tcp\ndeny out 25/tcp\ndeny from 198.51.100.0/24\ndeny from 2001:db8:5::/48\n"
	hands := []struct {
		name string
		argv []string
	}{
		{"ip raw MOAT-PREROUTING", []string{"iptables", "-t", "raw", "-I", "MOAT-PREROUTING", "1", "-s", "203.0.113.9", "-m", "comment", "--comment", "HAND", "-j", "DROP"}},
		{"ip6 raw MOAT-PREROUTING", []string{"ip6tables", "-t", "raw", "-I", "MOAT-PREROUTING", "1", "-s", "2001:db8:9::9", "-m", "comment", "--comment", "HAND", "-j", "DROP"}},
		{"ip filter MOAT-OUTPUT", []string{"iptables", "-I", "MOAT-OUTPUT", "1", "-m", "comment", "--comment", "HAND", "-j", "ACCEPT"}},
		{"ip6 filter MOAT-FORWARD", []string{"ip6tables", "-A", "MOAT-FORWARD", "-m", "comment", "--comment", "HAND", "-j", "ACCEPT"}},
		{"ip filter MOAT-GEN", []string{"iptables", "-A", "MOAT-GEN", "-m", "comment", "--comment", "HAND", "-j", "RETURN"}},
		{"ip6 filter MOAT-GEN", []string{"ip6tables", "-I", "MOAT-GEN", "1", "-m", "comment", "--comment", "HAND", "-j", "RETURN"}},
	}
	oldSend := sendRules
	t.Cleanup(func() { sendRules = oldSend })
	hasHand := func(lines map[policy.Family][]string) bool {
		for _, f := range families {
			if slices.ContainsFunc(lines[f.fam], func(l string) bool { return strings.Contains(l, "HAND") }) {
				return true
			}
		}
		return false
	}
	port := 8000
	for _, when := range []string{"before", "during", "during checked", "stale record"} {
		for _, h := range hands {
			name := when + ": " + h.name
			dir, elems := t.TempDir(), t.TempDir()
			newBackend := func() *Backend {
				return &Backend{Run: execrun.Exec, Netlink: true, IpsetNetlink: true, StateDir: dir, KeyDir: dir,
					Elements: setstore.Dir{Path: elems, Prefix: "ipt-set."}}
			}
			hand := func() {
				if out, err := execrun.Exec(ctx, nil, h.argv[0], h.argv[1:]...); err != nil {
					t.Fatalf("%s: %v: %v %s", name, h.argv, err, out)
				}
			}
			port++
			text := head + "allow " + strconv.Itoa(port) + "/tcp\n"
			var flushed []string
			err := nsMoat.Do(func() error {
				if legacyTables() {
					t.Skip("legacy x_tables loaded here")
				}
				sendRules = oldSend
				// Two commands: the second writes MOAT-INPUT alone and
				// leaves the chains' sums in ipt-chains.json.
				for _, s := range []string{head, head + "allow 7999/tcp\n"} {
					b := newBackend()
					if err := b.Apply(ctx, compile(t, s)); err != nil {
						return err
					}
					if _, err := b.Fingerprint(ctx); err != nil {
						return err
					}
				}
				b := newBackend()
				switch when {
				case "before":
					hand()
				case "stale record":
					// A command killed after its commit, before the save:
					// the file is the one before it.
					stale, err := os.ReadFile(filepath.Join(dir, chainCacheFile))
					if err != nil {
						return err
					}
					k := newBackend()
					if err := k.Apply(ctx, compile(t, head+"allow 7998/tcp\n")); err != nil {
						return err
					}
					if err := os.WriteFile(filepath.Join(dir, chainCacheFile), stale, 0o600); err != nil {
						return err
					}
					hand()
				case "during checked":
					g, err := nft.Generation()
					if err != nil {
						return err
					}
					b.Checked = nft.CheckedGen{Gen: g, OK: true}
				}
				if !hasHand(moatLines(t, ctx)) && (when == "before" || when == "stale record") {
					t.Fatalf("%s: the hand rule is not in iptables-save", name)
				}
				sent := false
				sendRules = func(txn *rulesTxn, gen uint32) error {
					sent = true
					flushed = nil
					for _, op := range txn.ops {
						if strings.Contains(op, " flush ") {
							flushed = append(flushed, strings.Replace(op, " flush ", " ", 1))
						}
					}
					if strings.HasPrefix(when, "during") {
						hand()
					}
					return oldSend(txn, gen)
				}
				err := b.Apply(ctx, compile(t, text))
				sendRules = oldSend
				lines := moatLines(t, ctx)
				all := strings.Join(lines[policy.FamilyV4], "\n") + "\n" + strings.Join(lines[policy.FamilyV6], "\n")
				if !sent {
					t.Errorf("%s: no transaction sent", name)
				}
				switch when {
				case "during checked":
					if !errors.Is(err, nft.ErrChangedSinceCheck) || !hasHand(lines) || strings.Contains(all, strconv.Itoa(port)) {
						t.Errorf("%s: %v, want %v, the hand rule kept and nothing written:\n%s", name, err, nft.ErrChangedSinceCheck, all)
					}
					return nil
				case "during":
					if err != nil {
						return err
					}
					// Kept (raw, whose section the restore leaves as moat's
					// own restore wrote it) or not, the generations must not
					// prove moat's rules what it applied: the command then
					// compares them in full before it records a fingerprint
					// (cli's ownRestoresOnly), which finds the hand rule.
					before, commits, applied, known := b.LastApply()
					g, gerr := nft.Generation()
					proves := applied && known && gerr == nil && g == before+commits
					if hasHand(lines) && (proves || b.LastApplyFresh()) {
						t.Errorf("%s: the hand rule kept and the generations vouch (%d+%d = %d):\n%s", name, before, commits, g, all)
					}
					return nil
				}
				if err != nil {
					return err
				}
				slices.Sort(flushed)
				if len(flushed) != 10 {
					t.Errorf("%s: flushed %q, want every chain of both families", name, flushed)
				}
				if hasHand(lines) {
					t.Errorf("%s: the hand rule kept:\n%s", name, all)
				}
				return nil
			})
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			if when != "before" && when != "stale record" {
				_ = nsMoat.Do(func() error { return newBackend().Remove(ctx) })
				continue
			}
			var ours, theirs map[policy.Family][]string
			_ = nsMoat.Do(func() error { ours = moatLines(t, ctx); return newBackend().Remove(ctx) })
			err = nsRef.Do(func() error {
				oldEnc := newXtEncoder
				newXtEncoder = func() (xtEncoder, error) { return nil, errXtUnsupported }
				defer func() { newXtEncoder = oldEnc }()
				r := &Backend{Run: execrun.Exec, Netlink: true, IpsetNetlink: true, Full: true}
				if err := r.Apply(ctx, compile(t, text)); err != nil {
					return err
				}
				theirs = moatLines(t, ctx)
				return r.Remove(ctx)
			})
			if err != nil {
				t.Fatal(err)
			}
			if !equalLines(ours, theirs) {
				t.Errorf("%s: iptables-save after the edit:\n%q\nof a whole restore:\n%q", name, ours, theirs)
			}
		}
	}
}
