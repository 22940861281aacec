package xtenc

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/moat-fw/moat/internal/execrun"
	"github.com/moat-fw/moat/internal/labtest"
	"github.com/moat-fw/moat/internal/nft"
)

type dumpedExpr struct {
	name string
	data []byte
}

type dumpedRule struct {
	chain string
	exprs []dumpedExpr
	udata []byte
}

func walk(b []byte, fn func(typ uint16, v []byte)) error {
	ad, err := netlink.NewAttributeDecoder(b)
	if err != nil {
		return err
	}
	for ad.Next() {
		fn(ad.Type()&nlaTypeMask, ad.Bytes())
	}
	return ad.Err()
}

func cstr(b []byte) string {
	if i := bytes.IndexByte(b, 0); i >= 0 {
		b = b[:i]
	}
	return string(b)
}

// dump reads every rule of one table of one family in the calling
// thread's namespace.
func dump(t *testing.T, proto uint8, table string) []dumpedRule {
	t.Helper()
	c, err := netlink.Dial(unix.NETLINK_NETFILTER, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = c.Close() }()
	attrs, err := netlink.MarshalAttributes([]netlink.Attribute{{Type: 1, Data: []byte(table + "\x00")}})
	if err != nil {
		t.Fatal(err)
	}
	msgs, err := c.Execute(netlink.Message{
		Header: netlink.Header{Type: netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_GETRULE), Flags: netlink.Request | netlink.Dump},
		Data:   append([]byte{proto, unix.NFNETLINK_V0, 0, 0}, attrs...),
	})
	if err != nil {
		t.Fatal(err)
	}
	var out []dumpedRule
	for _, m := range msgs {
		var r dumpedRule
		err := walk(m.Data[4:], func(typ uint16, v []byte) {
			switch typ {
			case 2:
				r.chain = cstr(v)
			case 7:
				r.udata = slices.Clone(v)
			case 4:
				_ = walk(v, func(_ uint16, v []byte) {
					var e dumpedExpr
					_ = walk(v, func(typ uint16, v []byte) {
						switch typ {
						case nftaExprName:
							e.name = cstr(v)
						case nftaExprData:
							e.data = slices.Clone(v)
						}
					})
					r.exprs = append(r.exprs, e)
				})
			}
		})
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, r)
	}
	return out
}

// xtParts reads a compat match or target's name, revision and info.
func xtParts(data []byte) (name string, rev uint32, info []byte) {
	_ = walk(data, func(typ uint16, v []byte) {
		switch typ {
		case nftaXtName:
			name = cstr(v)
		case nftaXtRev:
			if len(v) == 4 {
				rev = binary.BigEndian.Uint32(v)
			}
		case nftaXtInfo:
			info = v
		}
	})
	return
}

// normalize replaces the set indexes in a rule's set matches and SET
// targets with the sets' names (each namespace numbers its sets), takes
// the compat comment match out (its text returned) and drops counters'
// data.
func normalize(r dumpedRule, names map[uint16]string) (out []string, comment string) {
	for _, e := range r.exprs {
		name, rev, info := xtParts(e.data)
		switch {
		case e.name == "match" && name == "comment":
			comment = cstr(info)
			continue
		case e.name == "match" && name == "set" && rev == 4 && len(info) >= 2:
			info = slices.Clone(info)
			idx := binary.NativeEndian.Uint16(info)
			binary.NativeEndian.PutUint16(info, 0)
			out = append(out, fmt.Sprintf("match set(%s) %x", names[idx], info))
			continue
		case e.name == "target" && name == "SET" && rev == 3 && len(info) >= 2:
			info = slices.Clone(info)
			idx := binary.NativeEndian.Uint16(info)
			binary.NativeEndian.PutUint16(info, 0)
			out = append(out, fmt.Sprintf("target SET(%s) %x", names[idx], info))
			continue
		}
		out = append(out, e.name+" "+hex.EncodeToString(e.data))
	}
	return out, comment
}

// udataComment reads the comment out of a rule's user data.
func udataComment(ud []byte) string {
	for len(ud) >= 2 {
		typ, n := ud[0], int(ud[1])
		if len(ud) < 2+n {
			return "<bad udata>"
		}
		if typ == 0 {
			return cstr(ud[2 : 2+n])
		}
		ud = ud[2+n:]
	}
	return ""
}

var setRef = regexp.MustCompile(`--(?:match-set|add-set) (\S+) (\S+)`)

// corpusSets are the sets a corpus's lines name, with an ipset create
// line each (the kind the directions want).
func corpusSets(lines []string, family string) []string {
	seen := map[string]bool{}
	var out []string
	for _, l := range lines {
		for _, m := range setRef.FindAllStringSubmatch(l, -1) {
			if seen[m[1]] {
				continue
			}
			seen[m[1]] = true
			kind := "hash:net family " + family
			switch {
			case strings.Contains(m[2], ","):
				kind = "hash:ip,port family " + family + " timeout 60"
			case strings.Contains(m[1], "early"):
				kind = "list:set"
			case strings.Contains(m[1], "ban") || strings.Contains(m[1], "login"):
				kind = "hash:ip family " + family + " timeout 0 comment"
			}
			out = append(out, fmt.Sprintf("create %s %s", m[1], kind))
		}
	}
	return out
}

// tableOf: MOAT-PREROUTING and PREROUTING are raw's.
func tableOf(chain string) string {
	if strings.TrimPrefix(chain, "MOAT-") == "PREROUTING" {
		return "raw"
	}
	return "filter"
}

var builtins = map[string]bool{"INPUT": true, "OUTPUT": true, "FORWARD": true, "PREROUTING": true}

// declarations is the restore script that makes the chains lines use.
func declarations(lines []string) string {
	chains := map[string][]string{}
	for _, l := range lines {
		f := strings.Fields(l)
		for i, w := range f {
			if (i == 1 || (i > 0 && f[i-1] == "-j")) && (strings.HasPrefix(w, "MOAT-") || builtins[w]) {
				t := tableOf(w)
				if !slices.Contains(chains[t], w) {
					chains[t] = append(chains[t], w)
				}
			}
		}
	}
	var b strings.Builder
	for _, t := range []string{"raw", "filter"} {
		if len(chains[t]) == 0 {
			continue
		}
		fmt.Fprintf(&b, "*%s\n", t)
		for _, c := range chains[t] {
			policy := "-"
			if builtins[c] {
				policy = "ACCEPT"
			}
			fmt.Fprintf(&b, ":%s %s [0:0]\n", c, policy)
		}
		b.WriteString("COMMIT\n")
	}
	return b.String()
}

func ruleScript(lines []string) string {
	var b strings.Builder
	for _, t := range []string{"raw", "filter"} {
		var ls []string
		for _, l := range lines {
			if tableOf(strings.Fields(l)[1]) == t {
				ls = append(ls, l)
			}
		}
		if len(ls) == 0 {
			continue
		}
		fmt.Fprintf(&b, "*%s\n%s\nCOMMIT\n", t, strings.Join(ls, "\n"))
	}
	return b.String()
}

type famTools struct {
	proto         uint8
	family        string
	restore, save string
}

var fams = []famTools{{unix.NFPROTO_IPV4, "inet", "iptables-restore", "iptables-save"}, {unix.NFPROTO_IPV6, "inet6", "ip6tables-restore", "ip6tables-save"}}

// saveText is iptables-save without its comment lines.
func saveText(t *testing.T, tool string) string {
	t.Helper()
	out, err := execrun.Exec(context.Background(), nil, tool)
	if err != nil {
		t.Fatal(err, string(out))
	}
	var keep []string
	for _, l := range strings.Split(string(out), "\n") {
		if !strings.HasPrefix(l, "#") {
			keep = append(keep, l)
		}
	}
	return strings.Join(keep, "\n")
}

// setNames maps each namespace's set indexes to the names.
func setNames(t *testing.T, proto uint8, sets []string) map[uint16]string {
	t.Helper()
	lookup, closeFn, err := KernelSetIndex()
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = closeFn() }()
	out := map[uint16]string{}
	for _, s := range sets {
		name := strings.Fields(s)[1]
		idx, err := lookup(name, proto)
		if err != nil {
			t.Fatal(err)
		}
		out[idx] = name
	}
	return out
}

// compareKernel loads lines (one family) with the restore tool into one
// namespace and, encoded, over netlink into another, and compares the
// rules' expressions and iptables-save's text.
func compareKernel(t *testing.T, f famTools, lines []string) {
	t.Helper()
	if len(lines) == 0 {
		return
	}
	ctx := context.Background()
	sets := corpusSets(lines, f.family)
	nsA, nsB := labtest.NS(t, "xtencA"), labtest.NS(t, "xtencB")
	var dumpA, dumpB map[string][]dumpedRule
	var saveA, saveB string
	var namesA, namesB map[uint16]string
	readBack := func() (map[string][]dumpedRule, string) {
		d := map[string][]dumpedRule{}
		for _, tb := range []string{"raw", "filter"} {
			d[tb] = dump(t, f.proto, tb)
		}
		return d, saveText(t, f.save)
	}
	loadSets := func(extra string) {
		script := extra + strings.Join(sets, "\n") + "\n"
		if out, err := execrun.Exec(ctx, []byte(script), "ipset", "restore"); err != nil {
			t.Fatalf("ipset restore: %v %s\n%s", err, out, script)
		}
	}
	err := nsA.Do(func() error {
		loadSets("")
		script := declarations(lines) + ruleScript(lines)
		if out, err := execrun.Exec(ctx, []byte(script), f.restore, "--noflush"); err != nil {
			var numbered strings.Builder
			for i, l := range strings.Split(script, "\n") {
				fmt.Fprintf(&numbered, "%d: %s\n", i+1, l)
			}
			t.Fatalf("%s: %v %s\n%s", f.restore, err, out, numbered.String())
		}
		dumpA, saveA = readBack()
		namesA = setNames(t, f.proto, sets)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	var encoded [][]Rule
	err = nsB.Do(func() error {
		// Another set first: the indexes differ from A's.
		loadSets("create xtenc-other hash:ip\ncreate xtenc-other2 hash:ip\n")
		if out, err := execrun.Exec(ctx, []byte(declarations(lines)), f.restore, "--noflush"); err != nil {
			t.Fatalf("%s: %v %s", f.restore, err, out)
		}
		lookup, closeFn, err := KernelSetIndex()
		if err != nil {
			return err
		}
		defer func() { _ = closeFn() }()
		var x nft.XtBatch
		type sent struct {
			line  string
			attrs []netlink.Attribute
		}
		var all []sent
		for _, l := range lines {
			rules, err := EncodeAll(f.proto, l, lookup)
			if err != nil {
				t.Errorf("%s: %v", l, err)
				encoded = append(encoded, nil)
				continue
			}
			encoded = append(encoded, rules)
			for _, r := range rules {
				attrs := r.Attributes(tableOf(r.Chain))
				x.Add(f.proto, unix.NFT_MSG_NEWRULE, netlink.Create|0x800, attrs)
				all = append(all, sent{l, attrs})
			}
		}
		if t.Failed() {
			t.FailNow()
		}
		if err := x.Send(); err != nil {
			// Which rule: each alone.
			for _, s := range all {
				var one nft.XtBatch
				one.Add(f.proto, unix.NFT_MSG_NEWRULE, netlink.Create|0x800, s.attrs)
				if err := one.Send(); err != nil {
					t.Errorf("%s: the kernel refuses the encoding: %v", s.line, err)
				}
			}
			t.Fatalf("netlink: %v", err)
		}
		dumpB, saveB = readBack()
		namesB = setNames(t, f.proto, sets)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, tb := range []string{"raw", "filter"} {
		a, b := dumpA[tb], dumpB[tb]
		if len(a) != len(b) {
			t.Errorf("%s: %d rules by %s, %d encoded", tb, len(a), f.restore, len(b))
			continue
		}
		for i := range a {
			ea, ca := normalize(a[i], namesA)
			eb, cb := normalize(b[i], namesB)
			if a[i].udata != nil {
				t.Errorf("%s rule %d: %s wrote user data %x", tb, i, f.restore, a[i].udata)
			}
			if cb != "" {
				t.Errorf("%s rule %d: encoded with a compat comment", tb, i)
			}
			cb = udataComment(b[i].udata)
			if a[i].chain != b[i].chain || !slices.Equal(ea, eb) || ca != cb {
				t.Errorf("%s rule %d (%s):\nrestore: %s %q\n%s\nencoded: %s %q\n%s", tb, i, lineOf(lines, a[i].chain, i), a[i].chain, ca, strings.Join(ea, "\n"), b[i].chain, cb, strings.Join(eb, "\n"))
			}
		}
	}
	if saveA != saveB {
		t.Errorf("%s differs:\nrestore:\n%s\nencoded:\n%s", f.save, saveA, saveB)
	}
}

func lineOf(lines []string, chain string, _ int) string { return chain }

// kernelFamilies runs fn per family in a subtest of its own.
func skipWithoutNft(t *testing.T) {
	t.Helper()
	out, err := execrun.Exec(context.Background(), nil, "iptables", "--version")
	if err != nil || !strings.Contains(string(out), "nf_tables") {
		t.Skip("iptables is not iptables-nft here")
	}
}

func TestKernelShapes(t *testing.T) {
	skipWithoutNft(t)
	for _, f := range fams {
		t.Run(f.family, func(t *testing.T) {
			t.Parallel()
			compareKernel(t, f, shapes(f.proto))
		})
	}
}

// KernelSetIndex asks the namespace of the calling thread: a set of
// another namespace, or none, is an error (never an index of another
// set), and a set made after the first lookup is found.
func TestKernelSetIndex(t *testing.T) {
	nsA, nsB := labtest.NS(t, "xtencSA"), labtest.NS(t, "xtencSB")
	ctx := context.Background()
	err := nsA.Do(func() error {
		if out, err := execrun.Exec(ctx, []byte("create a hash:ip\ncreate b hash:net family inet6\n"), "ipset", "restore"); err != nil {
			t.Fatal(err, string(out))
		}
		lookup, closeFn, err := KernelSetIndex()
		if err != nil {
			return err
		}
		defer func() { _ = closeFn() }()
		ia, err := lookup("a", unix.NFPROTO_IPV4)
		if err != nil {
			t.Fatal(err)
		}
		ib, err := lookup("b", unix.NFPROTO_IPV6)
		if err != nil || ia == ib {
			t.Errorf("indexes %d %d (%v)", ia, ib, err)
		}
		if _, err := lookup("c", unix.NFPROTO_IPV4); err == nil || errors.Is(err, ErrUnsupported) {
			t.Errorf("a missing set: %v", err)
		}
		if _, err := lookup(strings.Repeat("x", 32), unix.NFPROTO_IPV4); !errors.Is(err, ErrUnsupported) {
			t.Errorf("a name of 32 bytes: %v", err)
		}
		if out, err := execrun.Exec(ctx, nil, "ipset", "create", "c", "hash:ip"); err != nil {
			t.Fatal(err, string(out))
		}
		if ic, err := lookup("c", unix.NFPROTO_IPV4); err != nil || ic == ia || ic == ib {
			t.Errorf("a set made later: %d, %v", ic, err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	err = nsB.Do(func() error {
		lookup, closeFn, err := KernelSetIndex()
		if err != nil {
			return err
		}
		defer func() { _ = closeFn() }()
		if idx, err := lookup("a", unix.NFPROTO_IPV4); err == nil {
			t.Errorf("another namespace's set: index %d", idx)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// A rule whose comment is in user data is found by its text as iptables
// prints it: iptables -C and -D (which compare rules as iptables-nft
// reads them back) take it for the rule of the same line.
func TestKernelCommentRuleBySpec(t *testing.T) {
	skipWithoutNft(t)
	ns := labtest.NS(t, "xtencC")
	ctx := context.Background()
	for _, f := range fams {
		tool := strings.TrimSuffix(f.restore, "-restore")
		err := ns.Do(func() error {
			line := `-A MOAT-INPUT -p tcp --dport 22 -m comment --comment "input:allow:1 admins é" -j RETURN`
			if out, err := execrun.Exec(ctx, []byte(declarations([]string{line})), f.restore, "--noflush"); err != nil {
				t.Fatal(err, string(out))
			}
			r, err := Encode(f.proto, line, nil)
			if err != nil {
				t.Fatal(err)
			}
			var x nft.XtBatch
			x.Add(f.proto, unix.NFT_MSG_NEWRULE, netlink.Create|0x800, r.Attributes("filter"))
			if err := x.Send(); err != nil {
				t.Fatal(err)
			}
			spec := []string{"MOAT-INPUT", "-p", "tcp", "--dport", "22", "-m", "comment", "--comment", "input:allow:1 admins é", "-j", "RETURN"}
			if out, err := execrun.Exec(ctx, nil, tool, append([]string{"-S"}, spec[0])...); err != nil || !strings.Contains(string(out), `-A MOAT-INPUT -p tcp -m tcp --dport 22 -m comment --comment "input:allow:1 admins é" -j RETURN`) {
				t.Errorf("%s -S: %v\n%s", tool, err, out)
			}
			other := slices.Clone(spec)
			other[8] = "input:allow:1 admins"
			if _, err := execrun.Exec(ctx, nil, tool, append([]string{"-C"}, other...)...); err == nil {
				t.Errorf("%s -C found the rule under another comment", tool)
			}
			if out, err := execrun.Exec(ctx, nil, tool, append([]string{"-C"}, spec...)...); err != nil {
				t.Errorf("%s -C: %v %s", tool, err, out)
			}
			if out, err := execrun.Exec(ctx, nil, tool, append([]string{"-D"}, spec...)...); err != nil {
				t.Errorf("%s -D: %v %s", tool, err, out)
			}
			if rules := dump(t, f.proto, "filter"); len(rules) != 0 {
				t.Errorf("%s -D left %d rules", tool, len(rules))
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
}

// Rule.Compat is needed: the kernel checks the protocol of compat
// extensions that name one (icmp, multiport, REJECT's tcp-reset) against
// NFTA_RULE_COMPAT, and refuses them without it.
func TestKernelCompatNeeded(t *testing.T) {
	skipWithoutNft(t)
	ns := labtest.NS(t, "xtencP")
	ctx := context.Background()
	err := ns.Do(func() error {
		if out, err := execrun.Exec(ctx, []byte("*filter\n:MOAT-INPUT - [0:0]\nCOMMIT\n"), "iptables-restore", "--noflush"); err != nil {
			t.Fatal(err, string(out))
		}
		for _, line := range []string{`-A MOAT-INPUT -p icmp --icmp-type 8 -j RETURN`, `-A MOAT-INPUT -p tcp -m multiport --dports 1,2 -j RETURN`, `-A MOAT-INPUT -p tcp -j REJECT --reject-with tcp-reset`} {
			r, err := Encode(unix.NFPROTO_IPV4, line, nil)
			if err != nil {
				t.Fatal(err)
			}
			send := func(compat bool) error {
				attrs := []netlink.Attribute{
					{Type: 1, Data: []byte("filter\x00")},
					{Type: 2, Data: []byte(r.Chain + "\x00")},
					{Type: unix.NLA_F_NESTED | 4, Data: r.Exprs},
				}
				if compat {
					attrs = append(attrs, netlink.Attribute{Type: unix.NLA_F_NESTED | 5, Data: r.Compat})
				}
				var x nft.XtBatch
				x.Add(unix.NFPROTO_IPV4, unix.NFT_MSG_NEWRULE, netlink.Create|0x800, attrs)
				return x.Send()
			}
			if err := send(false); err == nil {
				t.Errorf("%s: taken without NFTA_RULE_COMPAT", line)
			}
			if err := send(true); err != nil {
				t.Errorf("%s: %v", line, err)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// A set of the other family is refused as iptables refuses it ("The
// protocol family of set s6 is IPv6, which is not applicable"): the
// kernel takes such a rule, which then never matches the set (a '!'
// before it matches every packet). A list:set serves both families.
func TestKernelSetFamily(t *testing.T) {
	skipWithoutNft(t)
	ns := labtest.NS(t, "xtencF")
	ctx := context.Background()
	err := ns.Do(func() error {
		if out, err := execrun.Exec(ctx, []byte("create s4 hash:net family inet\ncreate s6 hash:net family inet6\ncreate sl list:set\n"), "ipset", "restore"); err != nil {
			t.Fatal(err, string(out))
		}
		lookup, closeFn, err := KernelSetIndex()
		if err != nil {
			return err
		}
		defer func() { _ = closeFn() }()
		for _, f := range fams {
			own, other := "s4", "s6"
			if f.proto == unix.NFPROTO_IPV6 {
				own, other = other, own
			}
			if out, err := execrun.Exec(ctx, []byte("*filter\n:MOAT-INPUT - [0:0]\nCOMMIT\n"), f.restore, "--noflush"); err != nil {
				t.Fatal(err, string(out))
			}
			for _, tc := range []struct {
				line string
				ok   bool
			}{
				{"-A MOAT-INPUT -m set --match-set " + own + " src -j DROP", true},
				{"-A MOAT-INPUT -m set --match-set sl src -j DROP", true},
				{"-A MOAT-INPUT -j SET --add-set " + own + " src", true},
				{"-A MOAT-INPUT -m set ! --match-set " + other + " src -j DROP", false},
				{"-A MOAT-INPUT -m set --match-set " + other + " src -j DROP", false},
				{"-A MOAT-INPUT -j SET --add-set " + other + " src", false},
			} {
				// iptables-restore says the same.
				_, rerr := execrun.Exec(ctx, []byte("*filter\n"+tc.line+"\nCOMMIT\n"), f.restore, "--noflush", "--test")
				if (rerr == nil) != tc.ok {
					t.Errorf("%s: %s: %v, want ok %v", f.restore, tc.line, rerr, tc.ok)
				}
				_, err := Encode(f.proto, tc.line, lookup)
				if (err == nil) != tc.ok {
					t.Errorf("family %d: %s: %v, want ok %v", f.proto, tc.line, err, tc.ok)
				}
				if err != nil && (tc.ok || errors.Is(err, ErrUnsupported) || !strings.Contains(err.Error(), other)) {
					t.Errorf("family %d: %s: %v, want an error naming the set", f.proto, tc.line, err)
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// Lines iptables-restore refuses that the encoder's allow-list would
// take: more arguments than its parser holds (fewer with set matches), a
// line longer than its buffer (read as two lines), an interface the
// built-in chain cannot have (-o in INPUT and PREROUTING, -i in OUTPUT).
// The encoder refuses them too.
func TestKernelRefusedLines(t *testing.T) {
	skipWithoutNft(t)
	ns := labtest.NS(t, "xtencL")
	ctx := context.Background()
	for _, tc := range []struct{ table, line string }{
		{"filter", "-A MOAT-INPUT" + strings.Repeat(" -m addrtype --dst-type LOCAL", 62) + " -j DROP"},
		{"filter", "-A MOAT-INPUT" + strings.Repeat(" -m set --match-set s src", 50) + " -j DROP"},
		{"filter", "-A MOAT-INPUT" + strings.Repeat(" ", 10220) + "-j DROP"},
		{"filter", "-A INPUT -o eth0 -j MOAT-INPUT"},
		{"filter", "-A INPUT ! -o eth+ -j MOAT-INPUT"},
		{"filter", "-A OUTPUT -i eth0 -j MOAT-INPUT"},
		{"raw", "-A PREROUTING -o eth0 -j MOAT-PREROUTING"},
		{"raw", "-A OUTPUT ! -i lo -j MOAT-PREROUTING"},
	} {
		err := ns.Do(func() error {
			if out, err := execrun.Exec(ctx, []byte("create s hash:net -exist\n"), "ipset", "restore"); err != nil {
				t.Fatal(err, string(out))
			}
			chain := "MOAT-INPUT"
			if tc.table == "raw" {
				chain = "MOAT-PREROUTING"
			}
			short := tc.line
			if len(short) > 80 {
				short = fmt.Sprintf("%s... (%d arguments, %d bytes)", short[:80], len(strings.Fields(short)), len(short))
			}
			if out, err := execrun.Exec(ctx, []byte("*"+tc.table+"\n:"+chain+" - [0:0]\n"+tc.line+"\nCOMMIT\n"), "iptables-restore", "--noflush", "--test"); err == nil {
				t.Errorf("iptables-restore takes %s", short)
			} else {
				t.Logf("%s: %v %s", short, err, strings.SplitN(string(out), "\n", 2)[0])
			}
			lookup, closeFn, err := KernelSetIndex()
			if err != nil {
				return err
			}
			defer func() { _ = closeFn() }()
			if _, err := EncodeAll(unix.NFPROTO_IPV4, tc.line, lookup); !errors.Is(err, ErrUnsupported) {
				t.Errorf("%s: %v, want ErrUnsupported", short, err)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
}

// Text an attacker may write that the encoder takes (words iptables
// reads as options or restore commands, blanks at the ends, quotes of the
// other kind, line separators of Unicode, names starting with '-') is
// the rule iptables-restore writes, byte for byte, and iptables-save
// prints it alike.
func TestKernelHostileText(t *testing.T) {
	skipWithoutNft(t)
	var lines []string
	for _, c := range []string{"!", "-j ACCEPT", "--comment", " leading", "trailing ", "#x", "a  b", "*filter", "COMMIT", "a'b", "'", "\u2028x\u2029", "\u00a0", "-", "--", "é€"} {
		lines = append(lines, `-A MOAT-INPUT -m comment --comment "`+c+`" -j DROP`)
	}
	lines = append(lines,
		`-A MOAT-INPUT -j LOG --log-prefix "!"`,
		`-A MOAT-INPUT -j LOG --log-prefix " "`,
		`-A MOAT-INPUT -j LOG --log-prefix "-j ACCEPT"`,
		`-A MOAT-INPUT -m hashlimit --hashlimit-above 5/sec --hashlimit-burst 3 --hashlimit-mode srcip --hashlimit-name -x --hashlimit-htable-expire 1000 -j DROP`,
		`-A MOAT-INPUT -i -x -j DROP`,
		`-A MOAT-INPUT -i . -j DROP`,
		`-A MOAT-INPUT ! -o -+ -j DROP`,
	)
	for _, f := range fams {
		t.Run(f.family, func(t *testing.T) {
			t.Parallel()
			for _, l := range lines {
				if _, err := EncodeAll(f.proto, l, func(string, uint8) (uint16, error) { return 1, nil }); err != nil {
					t.Errorf("%s: %v", l, err)
				}
			}
			compareKernel(t, f, lines)
			compareWire(t, f, lines)
		})
	}
}

// What KernelSetIndex's answers are worth after ipset changes: a swap
// keeps each name's index (a rule made before it matches the name's new
// contents, as iptables-save says), a rename moves the index with the set.
func TestKernelSetIndexAcrossSwapAndRename(t *testing.T) {
	ns := labtest.NS(t, "xtencS")
	ctx := context.Background()
	err := ns.Do(func() error {
		index := func(name string) uint16 {
			t.Helper()
			lookup, closeFn, err := KernelSetIndex()
			if err != nil {
				t.Fatal(err)
			}
			defer func() { _ = closeFn() }()
			idx, err := lookup(name, unix.NFPROTO_IPV4)
			if err != nil {
				t.Fatal(err)
			}
			return idx
		}
		ipset := func(args ...string) {
			t.Helper()
			if out, err := execrun.Exec(ctx, nil, "ipset", args...); err != nil {
				t.Fatal(err, string(out))
			}
		}
		ipset("create", "a", "hash:ip")
		ipset("create", "b", "hash:ip")
		ipset("add", "b", "192.0.2.1")
		ia, ib := index("a"), index("b")
		ipset("swap", "a", "b")
		if index("a") != ia || index("b") != ib {
			t.Errorf("after a swap: a %d (was %d), b %d (was %d)", index("a"), ia, index("b"), ib)
		}
		if out, err := execrun.Exec(ctx, nil, "ipset", "test", "a", "192.0.2.1"); err != nil {
			t.Errorf("the swap did not trade the members: %v %s", err, out)
		}
		ipset("rename", "a", "c")
		if index("c") != ia {
			t.Errorf("after a rename: c %d, a was %d", index("c"), ia)
		}
		ipset("create", "a", "hash:ip")
		if index("a") == ia {
			t.Errorf("a made anew has the renamed set's index %d", ia)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
