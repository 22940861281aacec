package xtenc

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/moat-fw/moat/internal/execrun"
	"github.com/moat-fw/moat/internal/labtest"
)

// sentRule is a NFT_MSG_NEWRULE as iptables-restore sent it.
type sentRule struct {
	family                 uint8
	exprs, compat, udata   []byte
	hasCompat, hasUserData bool
	types                  []uint16 // the attributes' types, in order
}

// straceSends reads the data of every sendmsg in an strace log written
// with -e write=all (its hex dumps).
func straceSends(t *testing.T, path string) [][]byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = f.Close() }()
	var out [][]byte
	var cur []byte
	in := false
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<24)
	for sc.Scan() {
		l := sc.Text()
		switch {
		case strings.Contains(l, "sendmsg("):
			if in {
				out = append(out, cur)
			}
			cur, in = nil, true
		case strings.HasPrefix(l, " | ") && len(l) >= 58 && in:
			for _, h := range strings.Fields(l[10:58]) {
				b, err := hex.DecodeString(h)
				if err != nil || len(b) != 1 {
					t.Fatalf("strace dump line %q", l)
				}
				cur = append(cur, b[0])
			}
		case strings.HasPrefix(l, " * ") && in:
		default:
			if in {
				out = append(out, cur)
				cur, in = nil, false
			}
		}
	}
	if in {
		out = append(out, cur)
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// newRules are the NFT_MSG_NEWRULE messages in sends, in order.
func newRules(t *testing.T, sends [][]byte) []sentRule {
	t.Helper()
	var out []sentRule
	for _, b := range sends {
		for len(b) >= 16 {
			n := int(binary.NativeEndian.Uint32(b))
			if n < 16 || n > len(b) {
				t.Fatalf("a netlink message of %d bytes in %d", n, len(b))
			}
			m := b[:n]
			b = b[(n+3)&^3:]
			if binary.NativeEndian.Uint16(m[4:]) != 0x0a06 || len(m) < 20 { // NFT_MSG_NEWRULE
				continue
			}
			r := sentRule{family: m[16]}
			if err := walk(m[20:], func(typ uint16, v []byte) {
				r.types = append(r.types, typ)
				switch typ {
				case 4:
					r.exprs = v
				case 5:
					r.compat, r.hasCompat = v, true
				case 7:
					r.udata, r.hasUserData = v, true
				}
			}); err != nil {
				t.Fatal(err)
			}
			out = append(out, r)
			if len(b) < 16 {
				break
			}
		}
	}
	return out
}

// withoutComment is a list of expressions without the compat comment
// match, and the comment.
func withoutComment(t *testing.T, exprs []byte) ([]byte, string) {
	t.Helper()
	var out []byte
	comment := ""
	for b := exprs; len(b) >= 4; {
		n := int(binary.NativeEndian.Uint16(b))
		if n < 4 || n > len(b) {
			t.Fatalf("an expression of %d bytes", n)
		}
		el := b[:(min((n+3)&^3, len(b)))]
		b = b[len(el):]
		var name string
		var data []byte
		_ = walk(el[4:n], func(typ uint16, v []byte) {
			switch typ {
			case nftaExprName:
				name = cstr(v)
			case nftaExprData:
				data = v
			}
		})
		if name == "match" {
			if xn, _, info := xtParts(data); xn == "comment" {
				comment = cstr(info)
				continue
			}
		}
		out = append(out, el...)
	}
	return out, comment
}

// compareWire runs iptables-restore on lines (one family) under strace in
// a namespace of its own and compares the NFT_MSG_NEWRULE messages it
// sent with the encoder's rules: the expressions byte for byte (the
// compat comment match on its side, the user data on the encoder's), the
// compat attribute, no user data from iptables.
func compareWire(t *testing.T, f famTools, lines []string) {
	t.Helper()
	if len(lines) == 0 {
		return
	}
	if _, err := exec.LookPath("strace"); err != nil {
		t.Skip("strace is not installed")
	}
	ctx := context.Background()
	ns := labtest.NS(t, "xtencW")
	log := filepath.Join(t.TempDir(), "strace")
	err := ns.Do(func() error {
		sets := corpusSets(lines, f.family)
		if out, err := execrun.Exec(ctx, []byte("create xtenc-other hash:ip\n"+strings.Join(sets, "\n")+"\n"), "ipset", "restore"); err != nil {
			t.Fatal(err, string(out))
		}
		if out, err := execrun.Exec(ctx, []byte(declarations(lines)), f.restore, "--noflush"); err != nil {
			t.Fatal(err, string(out))
		}
		if out, err := execrun.Exec(ctx, []byte(ruleScript(lines)), "strace", "-f", "-qq", "-e", "trace=sendmsg", "-e", "write=all", "-o", log, f.restore, "--noflush"); err != nil {
			t.Fatal(err, string(out))
		}
		lookup, closeFn, err := KernelSetIndex()
		if err != nil {
			return err
		}
		defer func() { _ = closeFn() }()
		var want []Rule
		var wantLines []string
		for _, tb := range []string{"raw", "filter"} {
			for _, l := range lines {
				if tableOf(strings.Fields(l)[1]) != tb {
					continue
				}
				rules, err := EncodeAll(f.proto, l, lookup)
				if err != nil {
					t.Fatalf("%s: %v", l, err)
				}
				for range rules {
					wantLines = append(wantLines, l)
				}
				want = append(want, rules...)
			}
		}
		got := newRules(t, straceSends(t, log))
		if len(got) != len(want) {
			t.Fatalf("%s sent %d rules, %d encoded", f.restore, len(got), len(want))
		}
		for i, g := range got {
			w := want[i]
			exprs, comment := withoutComment(t, g.exprs)
			var types []uint16
			for _, a := range w.Attributes("filter") {
				if a.Type&nlaTypeMask != nftaRuleUserdata {
					types = append(types, a.Type&nlaTypeMask)
				}
			}
			if !slices.Equal(types, g.types) {
				t.Errorf("%s: %s sent the attributes %v, Attributes has %v", wantLines[i], f.restore, g.types, types)
			}
			if g.family != f.proto || !bytes.Equal(exprs, w.Exprs) || comment != udataComment(w.UserData) ||
				!g.hasCompat || !bytes.Equal(g.compat, w.Compat) || g.hasUserData {
				t.Errorf("%s\n%s sent (family %d, comment %q, compat %x, user data %v %x):\n%x\nencoded (comment %q, compat %x):\n%x",
					wantLines[i], f.restore, g.family, comment, g.compat, g.hasUserData, g.udata, exprs, udataComment(w.UserData), w.Compat, w.Exprs)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestWireMatchesIptables: the encoder's bytes are the bytes
// iptables-restore sends (before the kernel reads them), not only the
// rules the kernel dumps back.
func TestWireMatchesIptables(t *testing.T) {
	skipWithoutNft(t)
	for _, f := range fams {
		t.Run(f.family, func(t *testing.T) {
			t.Parallel()
			compareWire(t, f, shapes(f.proto))
		})
	}
}
