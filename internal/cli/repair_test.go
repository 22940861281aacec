package cli

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/moat-fw/moat/internal/backend"
	"github.com/moat-fw/moat/internal/engine"
	"github.com/moat-fw/moat/internal/execrun"
	"github.com/moat-fw/moat/internal/labtest"
	"github.com/moat-fw/moat/internal/nft"
	"github.com/moat-fw/moat/internal/statedir"
)

// When the kernel has no usable fingerprint record but holds what moat
// applied, repairDrift compares in full once, and the fingerprint it then
// records stands on that comparison: it is not made a second time. The
// record is still not written when the ruleset changed after it.
func TestRepairComparesOnce(t *testing.T) {
	needRootAnd(t, "nft")
	const text = "default deny incoming\nallow 22/tcp\n"
	for _, handChange := range []bool{false, true} {
		ns := labtest.NS(t, "moatrep")
		dir := t.TempDir()
		rec := engine.Applied{Backend: "nftables", Policy: text, PolicySHA256: engine.Hash([]byte(text)), Time: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)}
		data, err := json.Marshal(rec)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, engine.AppliedFile), data, 0o600); err != nil {
			t.Fatal(err)
		}
		a, rs := quietApp(t, dir, text)
		b := &nft.Backend{Run: execrun.Exec, Read: nft.NetlinkReader{}, Netlink: true}
		a.kernel = []backend.Backend{b}
		compares := 0
		driftReasonHook = func() { compares++ }
		fingerprintHook = nil
		if handChange {
			fingerprintHook = func() {
				if _, err := execrun.Exec(context.Background(), []byte("add rule inet moat input tcp dport 6000 accept\n"), "nft", "-f", "-"); err != nil {
					t.Error(err)
				}
			}
		}
		var clean bool
		err = ns.Do(func() error {
			loader := &nft.Backend{Run: execrun.Exec, Read: nft.NetlinkReader{}, Netlink: true}
			if err := loader.Apply(context.Background(), rs); err != nil { // another process's whole load
				return err
			}
			_, clean = a.repairDrift(context.Background())
			return nil
		})
		driftReasonHook, fingerprintHook = nil, nil
		if err != nil {
			t.Fatal(err)
		}
		if !clean {
			t.Fatal("the kernel holding what moat applied was taken for drift")
		}
		if compares != 1 {
			t.Errorf("hand change %v: %d full comparisons, want 1", handChange, compares)
		}
		_, err = statedir.ReadFile(dir, fingerprintFile)
		if handChange && err == nil {
			t.Error("a fingerprint read after a hand change was recorded")
		}
		if !handChange && err != nil {
			t.Errorf("no fingerprint recorded after the comparison: %v", err)
		}
	}
}

// TestLayoutOnly: only differences the earlier layout can make send the
// kernel to the comparison with it; on iptables only another order.
func TestLayoutOnly(t *testing.T) {
	for _, c := range []struct {
		backend, d string
		want       bool
	}{
		{"iptables", "chain MOAT-INPUT holds moat's rules in another order", true},
		{"nftables", "chain input holds moat's rules in another order", true},
		{"nftables", "chain input_icmp is missing", true},
		{"nftables", "chain input has 5 rules moat did not load: builtin:icmp (accept)", true},
		{"nftables", "chain input lacks 2 rules moat loaded: gate:icmp (jump)", true},
		{"iptables", "chain MOAT-INPUT has 1 rule moat did not load: L1 (accept)", false},
		{"iptables", "chain MOAT-INPUT lacks 1 rule moat loaded: L1 (accept)", false},
		{"nftables", "chain input: 1 rule changed in place (tag and verdict kept): L1 (accept)", false},
		{"nftables", "set ban4 is missing", false},
		{"nftables", "chain x was added (moat does not make it)", false},
		{"nftables", "a table holding moat's rules was made dormant: none of its chains filters", false},
	} {
		if got := layoutOnly(c.backend, c.d); got != c.want {
			t.Errorf("layoutOnly(%s, %q) = %v, want %v", c.backend, c.d, got, c.want)
		}
	}
}
