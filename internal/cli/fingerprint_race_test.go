package cli

import (
	"context"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/moat-fw/moat/internal/execrun"
	"github.com/moat-fw/moat/internal/lab"
	"github.com/moat-fw/moat/internal/nft"
	"github.com/moat-fw/moat/internal/policy"
	"github.com/moat-fw/moat/internal/ruleset"
	"github.com/moat-fw/moat/internal/statedir"
)

// A rule added by hand to moat's table after the generations proved the
// table to be what moat committed, but before the fingerprint was read
// from the kernel, is in that fingerprint: it must not be recorded, or the
// next command, finding the same generation (or the same fingerprint),
// would take the hand-made rule for moat's.
func TestFingerprintNotRecordedAfterHandChange(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for a network namespace")
	}
	if _, err := exec.LookPath("nft"); err != nil {
		t.Skip("no nft")
	}
	ns, err := lab.NewNS(lab.UniqueName("moatfp"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ns.Close() })
	p, err := policy.NewDocument("moat.conf", []byte("default deny incoming\nallow 22/tcp\n")).Policy(policy.ParseServices(nil))
	if err != nil {
		t.Fatal(err)
	}
	rs := ruleset.Compile(p)
	dir := t.TempDir()
	a := &app{stateDir: dir, out: io.Discard, errOut: io.Discard, log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	st := appliedState{Known: true, Backend: "nftables", Policy: "x", Time: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)}
	b := &nft.Backend{Run: execrun.Exec, Read: nft.NetlinkReader{}, Netlink: true}
	fingerprintHook = func() {
		if _, err := execrun.Exec(context.Background(), []byte("add rule inet moat input tcp dport 6000 accept\n"), "nft", "-f", "-"); err != nil {
			t.Error(err)
		}
	}
	t.Cleanup(func() { fingerprintHook = nil })
	err = ns.Do(func() error {
		if err := b.Apply(context.Background(), rs); err != nil { // a whole load
			return err
		}
		a.recordFingerprint(context.Background(), b, st, verifiedGen{})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := statedir.ReadFile(dir, fingerprintFile); err == nil {
		t.Error("a fingerprint read after a hand change was recorded")
	}
}
