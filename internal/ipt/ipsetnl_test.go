package ipt

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The digest of a set read over netlink is the same for the same members
// and header however they were loaded (other order, another hash seed:
// swapped in), and differs when a member is added and another deleted
// (the count kept), when a member carries a flag (nomatch), and when the
// set is missing; names and maxelem are read too.
func TestIpsetNetlinkDigest(t *testing.T) {
	b, ns := kernelBackendNS(t)
	ctx := context.Background()
	mh := newMemberHasher([]byte("0123456789abcdef"))
	restore := func(script string) {
		t.Helper()
		if out, err := b.Run(ctx, []byte(script), "ipset", "restore"); err != nil {
			t.Fatalf("ipset restore: %v\n%s", err, out)
		}
	}
	digest := func(name string) string {
		t.Helper()
		var sum []byte
		err := ns.Do(func() error {
			h := sha256.New()
			if err := hashSet(ctx, h, mh, name); err != nil {
				return err
			}
			sum = h.Sum(nil)
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		return string(sum)
	}
	restore("create t4 hash:net family inet maxelem 65536\nadd t4 192.0.2.0/24\nadd t4 198.51.100.7\nadd t4 203.0.113.0/25\n" +
		"create t6 hash:net family inet6 maxelem 65536\nadd t6 2001:db8::/64\nadd t6 2001:db8:1::1\n")
	d4, d6 := digest("t4"), digest("t6")
	if d4 == d6 {
		t.Fatal("two sets of other members give one digest")
	}
	// The same members in another order, in a set made anew (another
	// hash seed), swapped in: the same digest.
	restore("create n4 hash:net family inet maxelem 65536\nadd n4 203.0.113.0/25\nadd n4 198.51.100.7\nadd n4 192.0.2.0/24\nswap n4 t4\ndestroy n4\n")
	if digest("t4") != d4 {
		t.Error("the same members loaded again give another digest")
	}
	// One member more and one less: the count is kept, the digest is not.
	restore("add t4 198.51.100.8\ndel t4 198.51.100.7\n")
	if digest("t4") == d4 {
		t.Error("a member replaced by hand left the digest as it was")
	}
	restore("del t4 198.51.100.8\nadd t4 198.51.100.7\n")
	if digest("t4") != d4 {
		t.Error("the members put back give another digest")
	}
	restore("add t4 198.51.100.0/24 nomatch\n")
	nomatch := digest("t4")
	restore("del t4 198.51.100.0/24\nadd t4 198.51.100.0/24\n")
	if plain := digest("t4"); plain == nomatch || plain == d4 {
		t.Error("a nomatch member is not told from a plain one")
	}
	// Another maxelem, same members: another header.
	restore("create m4 hash:net family inet maxelem 131072\nadd m4 203.0.113.0/25\nadd m4 198.51.100.7\nadd m4 192.0.2.0/24\n")
	restore("del t4 198.51.100.0/24\n")
	if digest("m4") == digest("t4") {
		t.Error("sets of other maxelem give one digest")
	}
	restore("create e4 hash:net family inet maxelem 65536\n")
	if digest("e4") == digest("missing4") {
		t.Error("an empty set and a missing one give one digest")
	}
	// What moat loaded, with the header read: the same digest as the
	// whole read, when the set holds exactly that.
	loaded := func(name string, nets ...string) string {
		t.Helper()
		var ps []netip.Prefix
		for _, n := range nets {
			ps = append(ps, netip.MustParsePrefix(n))
		}
		var sum []byte
		err := ns.Do(func() error {
			h := sha256.New()
			if err := hashSetLoaded(ctx, h, mh, name, ps); err != nil {
				return err
			}
			sum = h.Sum(nil)
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		return string(sum)
	}
	if loaded("t4", "203.0.113.0/25", "192.0.2.0/24", "198.51.100.7/32") != digest("t4") {
		t.Error("the digest of what was loaded differs from the set's")
	}
	if loaded("t6", "2001:db8:1::1/128", "2001:db8::/64") != digest("t6") {
		t.Error("the digest of what was loaded differs from the set's (IPv6)")
	}
	if loaded("e4") != digest("e4") || loaded("missing4") != digest("missing4") {
		t.Error("the digest of an empty or missing set differs from its load's")
	}
	if loaded("t4", "203.0.113.0/25", "192.0.2.0/24", "198.51.100.8/32") == digest("t4") {
		t.Error("a set holding other members than loaded gives the loaded digest")
	}
	var names []string
	var max int
	err := ns.Do(func() error {
		c, err := dialIpset()
		if err != nil {
			return err
		}
		defer func() { _ = c.Close() }()
		max = c.maxelem(ctx, "m4")
		names, err = c.names(ctx)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(names)
	if want := []string{"e4", "m4", "t4", "t6"}; !slices.Equal(names, want) {
		t.Errorf("names = %v, want %v", names, want)
	}
	if max != 131072 {
		t.Errorf("maxelem = %d, want 131072", max)
	}
}

// The key of the digests is made once in KeyDir and read by every later
// Backend (another command): the same members hash the same. Another
// key (another state directory, none) gives other hashes; a key file of
// the wrong size is replaced.
func TestDigestKey(t *testing.T) {
	dir := t.TempDir()
	p := netip.MustParsePrefix("192.0.2.0/24")
	hash := func(b *Backend) [2]uint64 {
		lo, hi := b.digestKey().prefix(p)
		return [2]uint64{lo, hi}
	}
	first := hash(&Backend{KeyDir: dir})
	key, err := os.ReadFile(filepath.Join(dir, digestKeyFile))
	if err != nil || len(key) != 16 {
		t.Fatalf("key file: %d bytes, %v", len(key), err)
	}
	if fi, err := os.Stat(filepath.Join(dir, digestKeyFile)); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("key file mode: %v %v", fi.Mode(), err)
	}
	if again := hash(&Backend{KeyDir: dir}); again != first {
		t.Error("a second Backend on the same state directory hashes differently")
	}
	if other := hash(&Backend{KeyDir: t.TempDir()}); other == first {
		t.Error("two state directories hash alike")
	}
	if none := hash(&Backend{}); none == first {
		t.Error("no key and a key hash alike")
	}
	if err := os.WriteFile(filepath.Join(dir, digestKeyFile), []byte("short"), 0o600); err != nil {
		t.Fatal(err)
	}
	if h := hash(&Backend{KeyDir: dir}); h == first {
		t.Error("a damaged key was not replaced")
	}
	if key, err := os.ReadFile(filepath.Join(dir, digestKeyFile)); err != nil || len(key) != 16 {
		t.Errorf("key file after damage: %d bytes, %v", len(key), err)
	}
}

// A key file others can read (a state directory restored from a backup
// with mode 0644, or copied with the admin's umask) is no secret: a
// process that may change ipsets but not read root's files could then
// craft networks whose hashes cancel out in the sum, and a set changed
// by hand would keep its digest. Such a key is replaced by a new one,
// written 0600; one readable by root alone is kept.
func TestDigestKeyExposed(t *testing.T) {
	p := netip.MustParsePrefix("192.0.2.0/24")
	known := []byte("0123456789abcdef")
	for _, mode := range []os.FileMode{0o644, 0o640, 0o604, 0o600} {
		dir := t.TempDir()
		path := filepath.Join(dir, digestKeyFile)
		if err := os.WriteFile(path, known, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(path, mode); err != nil {
			t.Fatal(err)
		}
		lo, hi := (&Backend{KeyDir: dir}).digestKey().prefix(p)
		klo, khi := newMemberHasher(known).prefix(p)
		used := lo == klo && hi == khi
		key, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		switch {
		case mode == 0o600 && !used:
			t.Errorf("mode %04o: a key readable by root alone was replaced", mode)
		case mode != 0o600 && used:
			t.Errorf("mode %04o: a key others can read was used", mode)
		case mode != 0o600 && (bytes.Equal(key, known) || len(key) != 16 || fi.Mode().Perm() != 0o600):
			t.Errorf("mode %04o: the exposed key was not replaced by a new one readable by root alone (%d bytes, mode %04o)", mode, len(key), fi.Mode().Perm())
		}
	}
}

// A sum kept in an element record reads back under its key only; adds
// and deletes move it to the sum of the networks after them.
func TestMemberSumKept(t *testing.T) {
	mh := newMemberHasher([]byte("0123456789abcdef"))
	other := newMemberHasher([]byte("fedcba9876543210"))
	nets := []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24"), netip.MustParsePrefix("2001:db8::/64"), netip.MustParsePrefix("198.51.100.7/32")}
	sum := mh.sumOf(nets)
	kept := mh.encodeSum(sum)
	if strings.ContainsAny(kept, " \n") {
		t.Fatalf("%q holds a blank", kept)
	}
	if got, ok := mh.decodeSum(kept); !ok || got != sum {
		t.Errorf("decodeSum(%q) = %+v %v, want %+v", kept, got, ok, sum)
	}
	if _, ok := other.decodeSum(kept); ok {
		t.Error("a sum kept under another key is read")
	}
	for _, bad := range []string{"", "-", kept[:len(kept)-1], strings.Replace(kept, sumTag, "sum0", 1), kept + ".1"} {
		if _, ok := mh.decodeSum(bad); ok {
			t.Errorf("decodeSum(%q) reads a sum", bad)
		}
	}
	// 198.51.100.7 out, 203.0.113.0/24 in: the sum of the networks after.
	moved := sum
	moved.sub(mh.prefix(nets[2]))
	in := netip.MustParsePrefix("203.0.113.0/24")
	moved.add(mh.prefix(in))
	if want := mh.sumOf([]netip.Prefix{nets[0], nets[1], in}); moved != want {
		t.Errorf("sum moved by a delete and an add %+v, of the networks after %+v", moved, want)
	}
}

// BenchmarkSetDigest is the drift check's read of the policy sets at
// 100,000 networks (50,000 IPv4 addresses and 50,000 IPv6 /64s in two
// sets): the digest of both (hashSet: the dump read part by part, each
// member hashed where it lies) against the baseline of the kernel's dump
// of both read and thrown away (dumpSet alone), in the same iteration.
// x-dump is the digest's CPU over the dump's: how close the read is to
// what the kernel's dump alone costs.
//
//	go test -run XXX -bench SetDigest -benchtime 20x ./internal/ipt/    # as root
func BenchmarkSetDigest(b *testing.B) {
	ctx := context.Background()
	be, ns := kernelBackendNS(b)
	var deny strings.Builder
	for i := 0; i < 50000; i++ {
		fmt.Fprintf(&deny, "deny from 2001:db8:%x:%x::/64\ndeny from 198.%d.%d.%d\n", i>>7, 2*(i&127), 18+i>>15, i>>7&255, 2*(i&127))
	}
	rs := compile(b, "default deny incoming\nallow 22/tcp\n"+deny.String())
	if err := be.Apply(ctx, rs); err != nil {
		b.Fatal(err)
	}
	var sets []string
	for _, s := range rs.Sets {
		if !s.Bans && s.ScanWindow == 0 && len(s.Entries) > 1000 {
			sets = append(sets, SetNames(rs).of(s.Name))
		}
	}
	if len(sets) != 2 {
		b.Fatalf("policy sets %v, want two", sets)
	}
	mh := newMemberHasher(make([]byte, 16))
	var dump, digest time.Duration
	err := ns.Do(func() error {
		b.ResetTimer()
		for range b.N {
			c0 := cpuTime()
			for _, n := range sets {
				if _, err := dumpSet(context.Background(), n, 0, func([]byte) error { return nil }); err != nil {
					return err
				}
			}
			c1 := cpuTime()
			for _, n := range sets {
				if err := hashSet(context.Background(), sha256.New(), mh, n); err != nil {
					return err
				}
			}
			dump += c1 - c0
			digest += cpuTime() - c1
		}
		return nil
	})
	if err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(digest.Microseconds())/1000/float64(b.N), "ms-cpu-digest")
	b.ReportMetric(float64(dump.Microseconds())/1000/float64(b.N), "ms-cpu-dump")
	b.ReportMetric(float64(digest)/float64(dump), "x-dump")
}

// The names of several ipset indexes asked in one exchange
// (setNamesByIndex) are those asked one by one; an index without a set
// fails it as it fails alone, and the connection still answers after.
func TestKernelSetNamesByIndex(t *testing.T) {
	b, ns := kernelBackendNS(t)
	ctx := context.Background()
	var script strings.Builder
	for i := range 9 {
		fmt.Fprintf(&script, "create names%d hash:net family inet\n", i)
	}
	if out, err := b.Run(ctx, []byte(script.String()+"destroy names4\n"), "ipset", "restore"); err != nil {
		t.Fatalf("ipset restore: %v\n%s", err, out)
	}
	err := ns.Do(func() error {
		c, err := dialIpset()
		if err != nil {
			return err
		}
		defer func() { _ = c.Close() }() // read only
		alone := map[uint16]string{}
		var idxs []uint16
		var gap uint16 = ipsetInvalidID
		for idx := uint16(0); idx < 64 && len(alone) < 8; idx++ {
			name, err := c.setNameByIndex(ctx, idx)
			if err != nil {
				if gap == ipsetInvalidID {
					gap = idx
				}
				continue
			}
			alone[idx] = name
			idxs = append(idxs, idx)
		}
		if len(alone) != 8 || gap == ipsetInvalidID {
			t.Fatalf("names alone %v, no set at %d", alone, gap)
		}
		// The exchange itself answers (not the fallback, one by one).
		if once, err := c.namesTogether(ctx, idxs); err != nil || !maps.Equal(once, alone) {
			t.Errorf("one exchange %v (%v), alone %v", once, err, alone)
		}
		together, err := c.setNamesByIndex(ctx, idxs)
		if err != nil || !maps.Equal(together, alone) {
			t.Errorf("together %v (%v), alone %v", together, err, alone)
		}
		if _, err := c.setNamesByIndex(ctx, append(slices.Clone(idxs), gap)); err == nil {
			t.Errorf("index %d without a set named", gap)
		} else if _, alone := c.setNameByIndex(ctx, gap); alone == nil || !strings.Contains(err.Error(), "index "+strconv.Itoa(int(gap))) {
			t.Errorf("together: %v; alone: %v", err, alone)
		}
		if again, err := c.setNamesByIndex(ctx, idxs[:3]); err != nil || len(again) != 3 {
			t.Errorf("after a failed exchange: %v %v", again, err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
