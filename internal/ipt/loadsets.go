package ipt

import (
	"io"
	"net/netip"

	"github.com/moat-fw/moat/internal/ruleset"
)

// setsToLoad are the sets of rs that writeSets loads, in its order.
func setsToLoad(rs *ruleset.Ruleset, existing map[string]bool, names Names, refill func(name string) bool) []*ruleset.Set {
	var out []*ruleset.Set
	done := map[string]bool{}
	for _, s := range rs.Sets {
		name := names.of(s.Name)
		// A policy set that exists but may hold other networks (changed
		// by hand, or changed by moat without a record of what it holds)
		// is filled again and swapped in.
		again := !s.Bans && s.ScanWindow == 0 && refill(name)
		if (existing[name] && !again) || done[name] {
			continue
		}
		done[name] = true
		out = append(out, s)
	}
	return out
}

// writeSets writes the ipset restore input that loads the sets not there
// yet (existing names those there), and the policy sets that refill
// names (their contents are not known to be the wanted ones), whole:
// each policy set is filled under a temporary name and renamed, or
// swapped in when it exists, so a set of that name is always complete;
// ban and scan sets are created empty and never touched again.
//
// networks gives a policy set's networks, merged and sorted, by ipset
// name (nil: merged here). destroyed, when not nil, gets the temporary
// sets the input destroys first (left by a moat killed while filling
// them). fills, when not nil, gets each policy set's members and its
// rename or swap instead of the input (the caller sends them over
// netlink once the input created the set: fillSet). One line is formatted at a time, into w: with 100,000 networks
// the input is 4.7 MB, which Apply writes straight into the file ipset
// reads (execrun.ExecFrom) instead of holding it, and its copies, whole.
func writeSets(w io.Writer, rs *ruleset.Ruleset, existing map[string]bool, names Names, refill func(name string) bool,
	networks func(name string) []netip.Prefix, destroyed map[string]bool, fills *[]fill) error {
	var line []byte
	put := func(parts ...string) error {
		line = line[:0]
		for _, p := range parts {
			line = append(line, p...)
		}
		line = append(line, '\n')
		_, err := w.Write(line)
		return err
	}
	for _, s := range setsToLoad(rs, existing, names, refill) {
		name := names.of(s.Name)
		if s.Bans || s.ScanWindow > 0 {
			if err := put(createLine(s, name)); err != nil {
				return err
			}
			continue
		}
		tmp := tmpSetName(name)
		if existing[tmp] {
			if destroyed != nil {
				destroyed[tmp] = true
			}
			if err := put("destroy ", tmp); err != nil {
				return err
			}
		}
		if err := put(createLine(s, tmp)); err != nil {
			return err
		}
		var nets []netip.Prefix
		if networks != nil {
			nets = networks(name)
		} else {
			nets = merged(s)
		}
		if fills != nil {
			*fills = append(*fills, fill{tmp: tmp, name: name, swap: existing[name], nets: nets})
			continue
		}
		head := "add " + tmp + " "
		for _, p := range nets {
			line = p.AppendTo(append(line[:0], head...))
			line = append(line, '\n')
			if _, err := w.Write(line); err != nil {
				return err
			}
		}
		if existing[name] {
			// The rules keep pointing at the name while it is swapped.
			if err := put("swap ", tmp, " ", name, "\ndestroy ", tmp); err != nil {
				return err
			}
			continue
		}
		if err := put("rename ", tmp, " ", name); err != nil {
			return err
		}
	}
	return nil
}
