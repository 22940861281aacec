package nft

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/moat-fw/moat/internal/execrun"
)

// checkedKernel is a kernel holding a policy, its backend vouched for at
// the generation now (as a command's drift check leaves it).
func checkedKernel(t *testing.T) *nlKernel {
	t.Helper()
	k := newNLKernel(t)
	k.apply(compile(t, "default deny incoming\nallow 22/tcp\nallow 80/tcp\n"))
	if err := k.do(func() error {
		g, err := Generation()
		k.be.Checked = CheckedGen{Gen: g, OK: true}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	return k
}

const (
	checkedEdit = "default deny incoming\nallow 22/tcp\nallow 80/tcp\nallow 8080/tcp\n"
	handRule    = "insert rule inet moat input tcp dport 7070 counter drop comment \"HAND\"\n"
)

// A rule put by hand into moat's table after the command's drift check
// and before Apply reads the table: Apply commits nothing (before, it
// planned from a read holding the hand rule and rewrote the chain
// without it), and says so with ErrChangedSinceCheck.
func TestKernelCheckedHandChangeBeforeRead(t *testing.T) {
	k := checkedKernel(t)
	if err := k.nft(handRule); err != nil {
		t.Fatal(err)
	}
	err := k.do(func() error { return k.be.Apply(context.Background(), compile(t, checkedEdit)) })
	if !errors.Is(err, ErrChangedSinceCheck) {
		t.Fatalf("apply after a hand change: %v, want ErrChangedSinceCheck", err)
	}
	table := k.table()
	if !strings.Contains(table, "HAND") || strings.Contains(table, "8080") {
		t.Errorf("the hand rule is gone or the edit was committed:\n%s", table)
	}
}

// The same between Apply's read and its commit (the netlink patch is
// refused: the generation moved): before, the patch was planned again
// from a new read, and after three refusals the table went through nft
// whole; now nothing is committed (ErrChangedSinceCheck). The same for a
// change in another table: Apply cannot tell, the command checks again.
func TestKernelCheckedChangeBeforeSend(t *testing.T) {
	for name, change := range map[string]string{
		"hand rule in moat's table": handRule,
		"another table":             "add table inet other\n",
	} {
		t.Run(name, func(t *testing.T) {
			k := checkedKernel(t)
			sends := 0
			k.be.beforeSend = func() {
				if sends++; sends == 1 {
					if _, err := execrun.Exec(context.Background(), []byte(change), "nft", "-f", "-"); err != nil {
						t.Error(err)
					}
				}
			}
			n := len(k.rec.inputs)
			err := k.do(func() error { return k.be.Apply(context.Background(), compile(t, checkedEdit)) })
			if !errors.Is(err, ErrChangedSinceCheck) {
				t.Fatalf("apply: %v, want ErrChangedSinceCheck", err)
			}
			if sends != 1 || len(k.rec.inputs) != n {
				t.Errorf("%d sends, %d nft runs: want 1 and none", sends, len(k.rec.inputs)-n)
			}
			table := k.table()
			if strings.Contains(table, "8080") || strings.Contains(change, "HAND") != strings.Contains(table, "HAND") {
				t.Errorf("the edit was committed or the hand rule lost:\n%s", table)
			}
		})
	}
}

// Nothing committed in between: the edit is committed, and the checked
// generation moves on by its own commit (a second Apply in the command
// is not refused for it); a change after that is refused again.
func TestKernelCheckedMovesOn(t *testing.T) {
	k := checkedKernel(t)
	g0 := k.be.Checked.Gen
	k.apply(compile(t, checkedEdit))
	if !k.be.Checked.OK || k.be.Checked.Gen != g0+1 {
		t.Fatalf("checked %+v after one commit from %d", k.be.Checked, g0)
	}
	k.apply(compile(t, "default deny incoming\nallow 22/tcp\n"))
	if err := k.nft(handRule); err != nil {
		t.Fatal(err)
	}
	err := k.do(func() error { return k.be.Apply(context.Background(), compile(t, checkedEdit)) })
	if !errors.Is(err, ErrChangedSinceCheck) {
		t.Fatalf("apply after a hand change: %v, want ErrChangedSinceCheck", err)
	}
	// Not vouched for (no check): the change is made as before.
	k.be.Checked = CheckedGen{}
	k.apply(compile(t, checkedEdit))
	if table := k.table(); !strings.Contains(table, "8080") {
		t.Errorf("the edit without a check was not committed:\n%s", table)
	}
}

// With Recheck (the command's check made again, here: "no HAND rule in
// moat's table"), a generation moved since the check by a change
// elsewhere, before the read or before the send, lets Apply go on from
// the generation read before the new check: the edit committed, the
// other table kept. A hand rule fails the new check: nothing committed.
func TestKernelCheckedRecheck(t *testing.T) {
	for _, c := range []struct {
		name       string
		change     string
		beforeSend bool
		ok         bool
	}{
		{"another table before the read", "add table inet other\n", false, true},
		{"another table before the send", "add table inet other\n", true, true},
		{"hand rule before the read", handRule, false, false},
		{"hand rule before the send", handRule, true, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			k := checkedKernel(t)
			rechecks := 0
			k.be.Checked.Recheck = func() (uint32, bool) {
				rechecks++
				g, err := Generation()
				return g, err == nil && !strings.Contains(k.table(), "HAND")
			}
			change := func() {
				if _, err := execrun.Exec(context.Background(), []byte(c.change), "nft", "-f", "-"); err != nil {
					t.Error(err)
				}
			}
			sends := 0
			k.be.beforeSend = func() {
				if sends++; sends == 1 && c.beforeSend {
					change()
				}
			}
			if !c.beforeSend {
				if err := k.do(func() error { change(); return nil }); err != nil {
					t.Fatal(err)
				}
			}
			err := k.do(func() error { return k.be.Apply(context.Background(), compile(t, checkedEdit)) })
			table := k.table()
			if c.ok && (err != nil || !strings.Contains(table, "8080")) {
				t.Errorf("apply: %v, want the edit committed:\n%s", err, table)
			}
			if !c.ok && (!errors.Is(err, ErrChangedSinceCheck) || strings.Contains(table, "8080") || !strings.Contains(table, "HAND")) {
				t.Errorf("apply: %v, want ErrChangedSinceCheck, nothing committed, the hand rule kept:\n%s", err, table)
			}
			if rechecks != 1 {
				t.Errorf("%d rechecks, want 1", rechecks)
			}
		})
	}
}
