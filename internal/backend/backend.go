// Package backend chooses the kernel interface moat programs and hides the
// difference behind one small interface.
package backend

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/moat-fw/moat/internal/ipt"
	"github.com/moat-fw/moat/internal/nft"
	"github.com/moat-fw/moat/internal/policy"
	"github.com/moat-fw/moat/internal/ruleset"
)

// Backend is what moat needs of a kernel interface.
type Backend interface {
	Name() string
	// Available says whether the backend can run here, and why not.
	Available() error
	// Script is the text that loads rs, as `moat show` prints it.
	Script(rs *ruleset.Ruleset) (string, error)
	// Check validates rs against the kernel without changing anything.
	Check(ctx context.Context, rs *ruleset.Ruleset) error
	// Apply makes moat's rules exactly rs.
	Apply(ctx context.Context, rs *ruleset.Ruleset) error
	// Active says whether moat's rules are loaded.
	Active(ctx context.Context) (bool, error)
	// Remove deletes moat's rules and nothing else.
	Remove(ctx context.Context) error
	// Counters are the kernel's counters by origin ID.
	Counters(ctx context.Context) (map[string]ruleset.Counter, error)
	// Snapshot captures everything moat owns (nil: nothing); Restore makes
	// moat's state exactly a snapshot again, set contents included.
	Snapshot(ctx context.Context) ([]byte, error)
	Restore(ctx context.Context, snap []byte) error
	// Ban puts addresses in the ban sets with their timeouts (in one
	// batch); Unban takes them out; Bans lists them with the time left.
	Ban(ctx context.Context, bans []ruleset.Ban) error
	Unban(ctx context.Context, addrs []netip.Addr) error
	Bans(ctx context.Context) ([]ruleset.Ban, error)
	// Protect puts addresses that logged in over SSH in the port scan
	// trap's login sets for ttl (refreshed if there already): the trap
	// never bans them. It fails when no trap is loaded.
	Protect(ctx context.Context, addrs []netip.Addr, ttl time.Duration) error
}

// Fingerprinter is a backend that can hash what moat's table or chains
// hold, without counters, bans or rate-limit state: record it after an
// apply, and a different value later means a change made outside moat.
// "" means nothing is loaded. Both backends implement it.
type Fingerprinter interface {
	Fingerprint(ctx context.Context) (string, error)
}

// SplitDetector is a backend whose apply is not one commit (iptables: one
// per family). Split describes moat's rules being left half old, half new
// by an interrupted apply ("" when they are not); the next Apply repairs
// it. `status` shows it.
type SplitDetector interface {
	Split(ctx context.Context) (string, error)
}

var (
	_ Fingerprinter = (*nft.Backend)(nil)
	_ Fingerprinter = (*ipt.Backend)(nil)
	_ SplitDetector = (*ipt.Backend)(nil)
)

// ForName returns the backend with that name; "auto" detects it.
func ForName(name policy.Backend) (Backend, error) {
	switch name {
	case policy.BackendNftables:
		return nft.New(), nil
	case policy.BackendIptables:
		return ipt.New(), nil
	case policy.BackendAuto, "":
		return Detect(), nil
	}
	return nil, fmt.Errorf("unknown backend %q: expected auto, nftables or iptables", name)
}

// All returns one of each backend.
func All() []Backend { return []Backend{nft.New(), ipt.New()} }

// Detect picks the backend the host uses: iptables when the legacy
// iptables kernel tables are in use (mixing would confuse the admin's
// tools), otherwise nftables when nft works, otherwise iptables.
func Detect() Backend {
	if legacyInUse() {
		return ipt.New()
	}
	n := nft.New()
	if n.Available() == nil {
		return n
	}
	return ipt.New()
}

// legacyInUse: the legacy x_tables modules list their loaded tables here.
func legacyInUse() bool {
	for _, f := range []string{"/proc/net/ip_tables_names", "/proc/net/ip6_tables_names"} {
		data, err := os.ReadFile(f)
		if err == nil && strings.TrimSpace(string(data)) != "" {
			return true
		}
	}
	return false
}
