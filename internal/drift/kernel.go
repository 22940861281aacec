package drift

import (
	"context"
	"fmt"
	"strings"

	"github.com/moat-fw/moat/internal/execrun"
	"github.com/moat-fw/moat/internal/ipt"
	"github.com/moat-fw/moat/internal/nft"
)

// Read reads moat's layout from the kernel for a backend ("nftables" or
// "iptables"), with run executing the tools (execrun.Exec for real); for
// iptables, the ipsets that want names are listed too. An nftables kernel
// without moat's table gives an empty layout. With run nil, nftables is
// read over netlink (no nft process, and a cost that does not grow with the
// bans: nft fetches every ban before any listing), iptables with
// execrun.Exec.
func Read(ctx context.Context, backend string, run execrun.Runner, want *Layout) (*Layout, error) {
	switch backend {
	case "nftables":
		if run == nil {
			return readNftNetlink()
		}
		out, err := run(ctx, nil, "nft", "-j", "list", "table", "inet", "moat")
		if err != nil {
			if strings.Contains(err.Error(), "No such file or directory") {
				return newLayout(), nil
			}
			return nil, fmt.Errorf("read moat's nftables table: %w", err)
		}
		return ParseNftJSON(out)
	case "iptables":
		dormant := false
		var hidden []string
		if run == nil {
			run = execrun.Exec
			// iptables-save does not show a table made dormant, nor
			// some nftables expressions put into moat's chains.
			d, err := nft.DormantTables(nft.XtablesTables)
			dormant = err == nil && len(d) > 0
			hidden, _ = ipt.HiddenRules()
			// A chain whose name iptables-save cannot print writes
			// lines of its own into the text: the chains are not read
			// from it while one is there.
			if odd, err := ipt.OddChains(); err == nil && len(odd) > 0 {
				l := newLayout()
				l.Odd = ipt.OddChainsDrift(odd)
				return l, nil
			}
		}
		v4, err := run(ctx, nil, "iptables-save") // filter and raw: every table
		if err == nil {
			err = ipt.CheckSave("iptables-save", v4)
		}
		if err != nil {
			return nil, fmt.Errorf("read moat's iptables chains: %w", err)
		}
		v6, err := run(ctx, nil, "ip6tables-save")
		if err == nil {
			err = ipt.CheckSave("ip6tables-save", v6)
		}
		if err != nil {
			return nil, fmt.Errorf("read moat's ip6tables chains: %w", err)
		}
		l := ParseIptSave(v4, v6)
		l.Dormant, l.Hidden = dormant, hidden
		for name := range want.Sets {
			out, err := run(ctx, nil, "ipset", "list", name)
			if err != nil {
				continue // missing: Compare says so
			}
			ParseIpsetList(l, name, out)
		}
		return l, nil
	}
	return nil, fmt.Errorf("drift: unknown backend %q", backend)
}

// ParseScript reads the layout of a backend's script ('moat show').
func ParseScript(backend, script string) *Layout {
	if backend == "iptables" {
		return ParseIptScript(script)
	}
	return ParseNftScript(script)
}

// Against compares moat's rules in the kernel with the script moat renders
// for what it applied: how they differ (nil: not at all), and the tags of
// the rules the kernel lacks.
func Against(ctx context.Context, backend, script string, run execrun.Runner) ([]string, map[string]bool, error) {
	want := ParseScript(backend, script)
	got, err := Read(ctx, backend, run, want)
	if err != nil {
		return nil, nil, err
	}
	return Compare(want, got), Missing(want, got), nil
}
