package guard

import (
	"context"
	"errors"
	"net/netip"
	"testing"
	"time"

	"github.com/moat-fw/moat/internal/ruleset"
)

// stormBanner fails every read, as a ban set read may while bans keep
// being committed.
type stormBanner struct{ banned int }

var errStorm = errors.New("the ruleset changed while it was read")

func (s *stormBanner) Ban(context.Context, []ruleset.Ban) error  { s.banned++; return nil }
func (*stormBanner) Bans(context.Context) ([]ruleset.Ban, error) { return nil, errStorm }
func (*stormBanner) Banned(context.Context, netip.Addr) (bool, error) {
	return false, errStorm
}

// The guard's "already banned" check, unsure when the kernel cannot be
// read (a ban storm), counts a line as a straggler of a ban only for an
// address its history says is banned: a new attacker is banned all the
// same, whether the backend looks up one ban or lists them all.
func TestKernelBanCheckUnsureNeverStopsNewBans(t *testing.T) {
	for _, tc := range []struct {
		name string
		b    Banner
	}{
		{"one lookup", &stormBanner{}},
		{"whole list", struct{ Banner }{&stormBanner{}}}, // no BanChecker
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := &Service{Cfg: testGuard(), Bans: tc.b}
			t0 := time.Unix(1_000_000, 0)
			old := netip.MustParseAddr("198.51.100.7")
			d := NewDetector(testGuard(), map[netip.Addr]*Record{old: {Until: t0.Add(time.Hour), Count: 1}})
			d.StillBanned = s.kernelBanCheck(context.Background())
			var banned []string
			for i := 0; i < 3; i++ {
				for _, a := range []string{"203.0.113.9", old.String()} {
					if b, ok := d.Observe(ev(FailedPassword, a), t0.Add(time.Duration(i)*time.Second)); ok {
						banned = append(banned, b.Addr.String())
					}
				}
			}
			if len(banned) != 1 || banned[0] != "203.0.113.9" {
				t.Errorf("banned %v; want the new attacker 203.0.113.9 (and not the address whose ban may stand)", banned)
			}
		})
	}
}
