package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/moat-fw/moat/internal/backend"
	"github.com/moat-fw/moat/internal/policy"
	"github.com/moat-fw/moat/internal/ruleset"
)

// 'moat bans' shows at most --limit bans (1000 by default) and says
// there are more; --all and --json list every one. 3,000 bans (IPv4 and
// IPv6) make the kernel's dump of a set come in many parts, which the
// limited read stops early; the bans shown are real ones, sorted, each
// once. Both backends.
func TestBansListLimit(t *testing.T) {
	eachBackend(t, func(t *testing.T, be string) {
		e, bk := newBanEnv(t, be)
		want := map[string]bool{}
		var bans []ruleset.Ban
		for i := 0; i < 1500; i++ {
			a4 := netip.AddrFrom4([4]byte{198, 51, byte(100 + i/250), byte(1 + i%250)})
			if i >= 250*4 {
				a4 = netip.AddrFrom4([4]byte{203, 0, 113, byte(1 + i%250)})
			}
			for _, a := range []netip.Addr{a4, banAddr(i)} {
				bans = append(bans, ruleset.Ban{Addr: a, Timeout: time.Hour, Reason: "test: listed"})
				want[a.String()] = true
			}
		}
		e.banDirect(bk, bans)
		total := len(want)

		rows := func(out string) []string {
			var got []string
			for _, l := range strings.Split(out, "\n") {
				f := strings.Fields(l)
				if len(f) == 0 || f[0] == "ADDRESS" || f[0] == "..." {
					continue
				}
				if !want[f[0]] {
					t.Errorf("not a ban: %q", l)
				}
				got = append(got, f[0])
			}
			for i := 1; i < len(got); i++ {
				if !netip.MustParseAddr(got[i-1]).Less(netip.MustParseAddr(got[i])) {
					t.Errorf("not sorted, or twice: %s then %s", got[i-1], got[i])
				}
			}
			return got
		}
		for _, c := range []struct {
			args []string
			n    int
			more bool
		}{
			{[]string{"bans"}, 1000, true},
			{[]string{"bans", "--limit", "5"}, 5, true},
			{[]string{"bans", "--limit", "1500"}, 1500, true}, // IPv4 whole, then IPv6 cut
			{[]string{"bans", "--limit", "1499"}, 1499, true}, // IPv4 cut
			{[]string{"bans", "--limit", fmt.Sprint(total)}, total, false},
			{[]string{"bans", "--all"}, total, false},
		} {
			out := e.mustMoat(c.args...)
			if got := rows(out); len(got) != c.n {
				t.Errorf("moat %s: %d bans shown, want %d", strings.Join(c.args, " "), len(got), c.n)
			}
			if more := strings.Contains(out, "... and more: "); more != c.more || more && !strings.Contains(out, "'moat bans --all'") {
				t.Errorf("moat %s: the line saying there are more: %v, want %v\n%.300s", strings.Join(c.args, " "), more, c.more, out[max(0, len(out)-300):])
			}
		}
		var list []struct {
			Address string `json:"address"`
		}
		if err := json.Unmarshal([]byte(e.mustMoat("bans", "--json")), &list); err != nil || len(list) != total {
			t.Errorf("--json: %d bans, %v; want every one (%d)", len(list), err, total)
		}
		if out, err := e.moat("bans", "--limit", "0"); err == nil {
			t.Errorf("--limit 0 accepted:\n%s", out)
		}
	})
}

// newBanEnv is a server with a policy (deny incoming, allow 22/tcp)
// applied with backend be, and that backend's driver, to ban straight in
// the kernel (with banDirect) as the guard does.
func newBanEnv(t *testing.T, be string) (*env, backend.Backend) {
	t.Helper()
	e := newEnv(t, be, false)
	e.apply("default deny incoming\nallow 22/tcp\n")
	bk, err := backend.ForName(policy.Backend(be))
	if err != nil {
		t.Fatal(err)
	}
	return e, bk
}

// banDirect adds bans with the backend's driver in the server's
// namespace, not through moat.
func (e *env) banDirect(bk backend.Backend, bans []ruleset.Ban) {
	e.t.Helper()
	if err := e.topo.Server.Do(func() error { return bk.Ban(context.Background(), bans) }); err != nil {
		e.t.Fatal(err)
	}
}
