package cli

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/moat-fw/moat/internal/nft"
)

// A command whose change Apply refused because the ruleset changed after
// moat's rules were checked runs again, each time after a new check; the
// bans are held for the last runs (and released once); after
// recheckTries runs it fails, saying so. Other errors and success end it
// at once.
func TestRunChecked(t *testing.T) {
	moved := fmt.Errorf("apply: %w", nft.ErrChangedSinceCheck)
	for _, c := range []struct {
		name      string
		refusals  int   // runs refused before one that succeeds
		other     error // returned instead of a refusal
		wantRuns  int
		wantHolds int
		wantErr   string
	}{
		{name: "no refusal", wantRuns: 1},
		{name: "a foreign change once", refusals: 1, wantRuns: 2},
		{name: "refused until the bans are held", refusals: recheckTries - recheckHoldingBans, wantRuns: recheckTries - recheckHoldingBans + 1, wantHolds: 1},
		{name: "refused every time", refusals: 100, wantRuns: recheckTries, wantHolds: 1, wantErr: "again and again"},
		{name: "another error", other: errors.New("refused for a reason of its own"), wantRuns: 1, wantErr: "of its own"},
	} {
		t.Run(c.name, func(t *testing.T) {
			runs, rechecks, holds, held := 0, 0, 0, 0
			err := runChecked(func() error {
				runs++
				if rechecks != runs-1 {
					t.Errorf("run %d after %d checks", runs, rechecks)
				}
				if c.other != nil {
					return c.other
				}
				if runs <= c.refusals {
					return moved
				}
				return nil
			}, func(try int) {
				rechecks++
				if try != rechecks {
					t.Errorf("check %d says try %d", rechecks, try)
				}
			}, func() func() {
				holds++
				held++
				if runs != recheckTries-recheckHoldingBans {
					t.Errorf("the bans are held after %d runs", runs)
				}
				return func() { held-- }
			})
			if runs != c.wantRuns || holds != c.wantHolds || held != 0 {
				t.Errorf("%d runs, bans held %d times (%d not released): want %d and %d", runs, holds, held, c.wantRuns, c.wantHolds)
			}
			switch {
			case c.wantErr == "" && err != nil:
				t.Errorf("error: %v", err)
			case c.wantErr != "" && (err == nil || !strings.Contains(err.Error(), c.wantErr)):
				t.Errorf("error %v, want one saying %q", err, c.wantErr)
			case c.other == nil && c.wantErr != "" && !errors.Is(err, nft.ErrChangedSinceCheck):
				t.Errorf("error %v does not wrap ErrChangedSinceCheck", err)
			}
		})
	}
}
