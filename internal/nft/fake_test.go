package nft

import (
	"context"
	"math/rand/v2"
	"net/netip"
	"strings"
	"testing"
	"time"

	"sigs.k8s.io/knftables"
)

// The backend runs against knftables.Fake: a whole apply, a patch, bans
// kept across applies, remove.
func TestFakeApply(t *testing.T) {
	ctx := context.Background()
	fake := knftables.NewFake(knftables.InetFamily, TableName)
	b := NewWith(fake, nil)
	if ok, _ := b.Active(ctx); ok {
		t.Fatal("active before apply")
	}
	head := "default deny incoming\nallow 22/tcp\n"
	if err := b.Apply(ctx, compile(t, head+denyList(20, -1))); err != nil {
		t.Fatal(err)
	}
	if ok, _ := b.Active(ctx); !ok {
		t.Fatal("not active after apply")
	}
	if err := b.Ban(ctx, nil); err != nil {
		t.Fatal(err)
	}
	if err := b.Ban(ctx, banOf("203.0.113.5")); err != nil {
		t.Fatal(err)
	}
	if err := b.Apply(ctx, compile(t, head+"allow 80/tcp\n"+denyList(21, 3))); err != nil {
		t.Fatal(err)
	}
	dump := fake.Dump()
	for _, want := range []string{"tcp dport 80", "198.18.0.40", "203.0.113.5"} {
		if !strings.Contains(dump, want) {
			t.Errorf("fake table lacks %q:\n%s", want, dump)
		}
	}
	if strings.Contains(dump, "198.18.0.6 ") {
		t.Errorf("deleted entry still there:\n%s", dump)
	}
	// The same through a whole rewrite gives the same table.
	fresh := knftables.NewFake(knftables.InetFamily, TableName)
	f := NewWith(fresh, nil)
	if err := f.Apply(ctx, compile(t, head+"allow 80/tcp\n"+denyList(21, 3))); err != nil {
		t.Fatal(err)
	}
	if err := f.Ban(ctx, banOf("203.0.113.5")); err != nil {
		t.Fatal(err)
	}
	if got, want := sortedLines(dump), sortedLines(fresh.Dump()); got != want {
		t.Errorf("patched fake differs from a fresh one:\n%s\n---\n%s", got, want)
	}
	if err := b.Remove(ctx); err != nil {
		t.Fatal(err)
	}
	if ok, _ := b.Active(ctx); ok {
		t.Fatal("active after remove")
	}
}

func sortedLines(s string) string {
	lines := strings.Split(s, "\n")
	slicesSort(lines)
	return strings.Join(lines, "\n")
}

// The script is byte-stable: the same policy twice, and the same
// addresses written in another order, render the same bytes.
func TestScriptDeterministic(t *testing.T) {
	lines := strings.Split(strings.TrimSpace(denyList(500, -1)), "\n")
	head := "default deny incoming\nallow 22/tcp\n"
	a, _ := New().Script(compile(t, head+strings.Join(lines, "\n")+"\n"))
	b, _ := New().Script(compile(t, head+strings.Join(lines, "\n")+"\n"))
	rand.Shuffle(len(lines), func(i, j int) { lines[i], lines[j] = lines[j], lines[i] })
	c, _ := New().Script(compile(t, head+strings.Join(lines, "\n")+"\n"))
	if a != b || a != c {
		t.Errorf("script not byte-stable")
	}
}

// Ban and unban scripts are byte-stable whatever order maps give.
func TestBanScriptDeterministic(t *testing.T) {
	var scripts []string
	b := &Backend{Run: func(_ context.Context, stdin []byte, _ string, _ ...string) ([]byte, error) {
		scripts = append(scripts, string(stdin))
		return nil, nil
	}}
	bans := banOf("2001:db8::9", "203.0.113.7", "2001:db8::1", "198.51.100.3")
	for i := 0; i < 20; i++ {
		if err := b.Ban(context.Background(), bans); err != nil {
			t.Fatal(err)
		}
		if err := b.Unban(context.Background(), []netip.Addr{mustAddr("2001:db8::9"), mustAddr("203.0.113.7")}); err != nil {
			t.Fatal(err)
		}
	}
	for i := 2; i < len(scripts); i++ {
		if scripts[i] != scripts[i%2] {
			t.Fatalf("script %d differs:\n%s\n---\n%s", i, scripts[i], scripts[i%2])
		}
	}
	if !strings.HasPrefix(scripts[0], "add element inet moat ban4 { 198.51.100.3 timeout 1h comment \"test\", 203.0.113.7") {
		t.Errorf("ban script:\n%s", scripts[0])
	}
}

// Protect writes the login sets with the timeout, refreshing one there
// already (add, delete, add), per family, mapped addresses unmapped.
func TestProtectScript(t *testing.T) {
	var script string
	b := &Backend{Run: func(_ context.Context, stdin []byte, _ string, _ ...string) ([]byte, error) {
		script = string(stdin)
		return nil, nil
	}}
	if err := b.Protect(context.Background(), []netip.Addr{mustAddr("2001:db8::9"), mustAddr("::ffff:192.0.2.7"), mustAddr("192.0.2.7")}, 24*time.Hour); err != nil {
		t.Fatal(err)
	}
	want := "add element inet moat login4 { 192.0.2.7 timeout 1d }\n" +
		"delete element inet moat login4 { 192.0.2.7 }\n" +
		"add element inet moat login4 { 192.0.2.7 timeout 1d }\n" +
		"add element inet moat login6 { 2001:db8::9 timeout 1d }\n" +
		"delete element inet moat login6 { 2001:db8::9 }\n" +
		"add element inet moat login6 { 2001:db8::9 timeout 1d }\n"
	if script != want {
		t.Errorf("protect script:\n%s\nwant:\n%s", script, want)
	}
}
