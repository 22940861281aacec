package ipt

import (
	"context"
	"strings"
	"testing"

	"github.com/moat-fw/moat/internal/policy"
)

// A set made by hand under the name of one of moat's policy sets, of
// another type or family (the kernel refuses to swap such a set with
// moat's, and moat's rules can refer to it only once it is moat's kind):
// the apply must still load moat's set, whole, and leave no temporary
// set, instead of failing at every apply.
func TestKernelForeignSetWithMoatsName(t *testing.T) {
	for _, c := range []struct{ name, create, add string }{
		{"other type", "hash:ip,port family inet6", "2001:db8::9,tcp:80"},
		{"other family", "hash:net family inet6", "2001:db8:9::/48"},
		{"list", "list:set", ""},
		{"bitmap", "bitmap:port range 1-1024", "80"},
	} {
		t.Run(c.name, func(t *testing.T) {
			ctx := context.Background()
			b := kernelBackend(t)
			rs := compile(t, "default deny incoming\nallow 22/tcp\n"+denyList(3, -1))
			var v4 string
			for _, s := range rs.Sets {
				if !s.Bans && s.ScanWindow == 0 && s.Family == policy.FamilyV4 && len(s.Entries) > 0 {
					v4 = SetNames(rs).of(s.Name)
				}
			}
			if v4 == "" {
				t.Fatal("no IPv4 policy set")
			}
			args := append([]string{"create", v4}, strings.Fields(c.create)...)
			if _, err := b.Run(ctx, nil, "ipset", args...); err != nil {
				t.Fatal(err)
			}
			if c.add != "" {
				if _, err := b.Run(ctx, nil, "ipset", "add", v4, c.add); err != nil {
					t.Fatal(err)
				}
			}
			if err := b.Apply(ctx, rs); err != nil {
				t.Fatalf("apply with a hand set named %s (%s): %v", v4, c.create, err)
			}
			out, err := b.Run(ctx, nil, "ipset", "list", v4)
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(string(out), "Type: hash:net") || !strings.Contains(string(out), "family inet ") || !strings.Contains(string(out), "198.18.0.0") {
				t.Errorf("%s after the apply:\n%s", v4, out)
			}
			names, _ := b.Run(ctx, nil, "ipset", "list", "-n")
			if strings.Contains(string(names), "moatnew-") {
				t.Errorf("a temporary set is left: %s", names)
			}
			if split, err := b.Split(ctx); split != "" || err != nil {
				t.Errorf("split after the apply: %q %v", split, err)
			}
		})
	}
}

// Sets made by hand whose names start as moat's but hold characters moat
// never uses (a space, a quote: ipset restore would read them as other
// words, or another command after a newline) are not moat's: every apply
// failed removing them as unused, after its rules were loaded. They are
// left alone.
func TestKernelHandSetOddName(t *testing.T) {
	ctx := context.Background()
	b := kernelBackend(t)
	for _, n := range []string{"moat-a b", `moat-c"d`, "moatnew-x y"} {
		if _, err := b.Run(ctx, nil, "ipset", "create", n, "hash:net"); err != nil {
			t.Fatal(err)
		}
	}
	for _, text := range []string{"default deny incoming\nallow 22/tcp\n" + denyList(3, -1), "default deny incoming\nallow 22/tcp\nallow 80/tcp\n"} {
		if err := b.Apply(ctx, compile(t, text)); err != nil {
			t.Fatalf("apply with hand sets of odd names: %v", err)
		}
	}
	out, _ := b.Run(ctx, nil, "ipset", "list", "-n")
	for _, n := range []string{"moat-a b", `moat-c"d`, "moatnew-x y"} {
		if !strings.Contains(string(out), n+"\n") {
			t.Errorf("the hand set %q is gone: %q", n, out)
		}
	}
	for _, n := range []string{"moat-a b", `moat-c"d`, "moat-e\nflush moat-bl4_x", "moat-", "moat-ok_1", "moatnew-a b"} {
		want := n == "moat-ok_1"
		if got := ownSet(n); got != want {
			t.Errorf("ownSet(%q) = %v", n, got)
		}
	}
}
