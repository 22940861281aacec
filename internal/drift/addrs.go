package drift

import (
	"encoding/json"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"go4.org/netipx"
)

// addrs is the addresses of a set, compared as address ranges (the kernel
// may merge or split what moat wrote).
type addrs struct {
	b   netipx.IPSetBuilder
	bad []string // elements that are not addresses: compared as text
}

// addText adds elements written as "192.0.2.0/24, 192.0.2.9, a-b".
func (s *addrs) addText(list string) {
	for _, e := range strings.Split(list, ",") {
		e = strings.TrimSpace(e)
		if e == "" {
			continue
		}
		if p, err := netip.ParsePrefix(e); err == nil {
			s.b.AddPrefix(p.Masked())
		} else if a, err := netip.ParseAddr(e); err == nil {
			s.b.Add(a)
		} else if r, err := netipx.ParseIPRange(e); err == nil {
			s.b.AddRange(r)
		} else {
			s.bad = append(s.bad, e)
		}
	}
}

// addJSON adds one element of `nft -j` output: "192.0.2.9",
// {"prefix": {"addr": ..., "len": ...}}, {"range": [a, b]}, or
// {"elem": {"val": ...}}.
func (s *addrs) addJSON(raw json.RawMessage) {
	var str string
	if json.Unmarshal(raw, &str) == nil {
		s.addText(str)
		return
	}
	var obj struct {
		Prefix *struct {
			Addr string `json:"addr"`
			Len  int    `json:"len"`
		} `json:"prefix"`
		Range []string `json:"range"`
		Elem  *struct {
			Val json.RawMessage `json:"val"`
		} `json:"elem"`
	}
	if json.Unmarshal(raw, &obj) != nil {
		s.bad = append(s.bad, string(raw))
		return
	}
	switch {
	case obj.Prefix != nil:
		s.addText(obj.Prefix.Addr + "/" + strconv.Itoa(obj.Prefix.Len))
	case len(obj.Range) == 2:
		s.addText(obj.Range[0] + "-" + obj.Range[1])
	case obj.Elem != nil && len(obj.Elem.Val) > 0:
		s.addJSON(obj.Elem.Val)
	default:
		s.bad = append(s.bad, string(raw))
	}
}

// diff says what got has that s lacks (+) and what it lacks (-), or "".
func (s *addrs) diff(got *addrs) string {
	w, err1 := s.b.IPSet()
	g, err2 := got.b.IPSet()
	if err1 != nil || err2 != nil {
		return "unreadable"
	}
	sameBad := strings.Join(s.bad, ",") == strings.Join(got.bad, ",")
	if sameBad && w.Equal(g) {
		// The common case, found without the two differences (at 100,000
		// networks each builder held and sorted copies of both sets).
		return ""
	}
	var parts []string
	add := func(sign string, a, b *netipx.IPSet) {
		var d netipx.IPSetBuilder
		d.AddSet(a)
		d.RemoveSet(b)
		set, err := d.IPSet()
		if err != nil {
			return
		}
		for i, p := range set.Prefixes() {
			if i == 3 {
				parts = append(parts, sign+"...")
				break
			}
			parts = append(parts, sign+p.String())
		}
	}
	add("+", g, w)
	add("-", w, g)
	if !sameBad {
		var extra []string
		for _, e := range got.bad {
			if !slices.Contains(s.bad, e) {
				extra = append(extra, e)
			}
		}
		switch {
		case len(extra) == 0:
			parts = append(parts, "other elements")
		case len(extra) > 3:
			parts = append(parts, "other elements: +"+strings.Join(extra[:3], ", +")+", +...")
		default:
			parts = append(parts, "other elements: +"+strings.Join(extra, ", +"))
		}
	}
	return strings.Join(parts, ", ")
}

// policySetSpec says whether an nft set definition is a policy set: an
// interval set without timeouts (bans and rate-limit state have them).
func policySetSpec(spec string) bool {
	flags := ""
	if _, rest, ok := strings.Cut(spec, "flags "); ok {
		flags, _, _ = strings.Cut(rest, ";")
	}
	return strings.Contains(flags, "interval") && !strings.Contains(flags, "timeout") && !strings.Contains(flags, "dynamic")
}
