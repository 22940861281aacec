package cli

import (
	"context"
	"errors"
	"testing"

	"github.com/moat-fw/moat/internal/execrun"
	"github.com/moat-fw/moat/internal/ipt"
	"github.com/moat-fw/moat/internal/labtest"
	"github.com/moat-fw/moat/internal/ruleset"
	"github.com/moat-fw/moat/internal/setstore"
)

// A protected set that cannot be read is no proof that it holds what moat
// loaded. An address is added by hand to moat-protect4 (spared every ban
// from then on) and the `ipset list` of it fails: changedInPlace went on
// as if the set were equal, and with the rules unchanged it said "no
// difference", so driftReason and kernelHolds vouched for the kernel and
// the fingerprint (hand address in it) was recorded as moat's. Either the
// difference or the error must come back.
func TestChangedInPlaceUnreadableProtectedSet(t *testing.T) {
	needRootAnd(t, "iptables-restore", "ipset")
	const text = "default deny incoming\nallow 22/tcp\ndeny from 192.0.2.7\n"
	ns := labtest.NS(t, "moatnoproof")
	dir := t.TempDir()
	a, rs := quietApp(t, dir, text)
	ctx := context.Background()
	err := ns.Do(func() error {
		b := ipt.New()
		b.Elements = setstore.Dir{Path: dir, Prefix: "ipset."}
		if err := b.Apply(ctx, rs); err != nil {
			return err
		}
		script, err := b.Script(rs)
		if err != nil {
			return err
		}
		if _, err := execrun.Exec(ctx, nil, "ipset", "add", ipt.IPSetName(ruleset.ProtectSet4), "192.0.2.2"); err != nil {
			return err
		}
		if diff, err := a.changedInPlace(ctx, b, rs, script); err != nil || len(diff) == 0 {
			t.Errorf("the address added by hand is not seen: %q, %v", diff, err)
		}
		b.Run = func(ctx context.Context, stdin []byte, name string, args ...string) ([]byte, error) {
			if name == "ipset" && len(args) == 2 && args[0] == "list" && args[1] == ipt.IPSetName(ruleset.ProtectSet4) {
				return nil, errors.New("ipset list refused")
			}
			return execrun.Exec(ctx, stdin, name, args...)
		}
		if diff, err := a.changedInPlace(ctx, b, rs, script); err == nil && len(diff) == 0 {
			t.Error("a protected set that could not be read was taken for the one moat loaded")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
