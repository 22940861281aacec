package cli

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

// Right after a killed command or rollback (or while one runs), moat's rules differ
// from what it last applied because of that command, not of a hand
// change: status must not say "changed outside moat" beside
// INTERRUPTED (it did), and names the command instead; without one it
// still says so.
func TestStatusInterruptedNotOutside(t *testing.T) {
	for _, tc := range []struct {
		in      *statusInterrupted
		pending *statusPending
		want    string
		outside bool
	}{
		{nil, &statusPending{rollingBack: true}, "the rollback of the unconfirmed change began and has not finished", false},
		{&statusInterrupted{Command: "moat allow 80/tcp", Time: time.Now(), PID: 7}, nil, "the interrupted 'moat allow 80/tcp' left them part changed", false},
		{&statusInterrupted{Command: "moat allow 80/tcp", Time: time.Now(), PID: 7, Running: true}, nil, "while 'moat allow 80/tcp' (pid 7) changes them", false},
		{nil, nil, "moat's chains were changed outside moat (moat reload repairs it)", true},
	} {
		var out bytes.Buffer
		a := &app{out: &out}
		rep := &statusReport{Status: "active", Backend: "iptables"}
		rep.Interrupted, rep.Pending = tc.in, tc.pending
		rep.KernelChanged = []string{"chain ip MOAT-INPUT lacks 1 rule moat loaded: L3 (return)"}
		a.printTruth(rep)
		got := out.String()
		if !strings.Contains(got, tc.want) || strings.Contains(got, "outside moat") != tc.outside || !strings.Contains(got, "L3 (return)") {
			t.Errorf("interrupted %+v:\n%s", tc.in, got)
		}
	}
}
