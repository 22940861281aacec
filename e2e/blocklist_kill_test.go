package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// copyDir copies the regular files of src into dst (made if missing).
func copyDir(t *testing.T, src, dst string) {
	t.Helper()
	ents, err := os.ReadDir(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(dst, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, ent := range ents {
		if !ent.Type().IsRegular() {
			continue
		}
		data, err := os.ReadFile(filepath.Join(src, ent.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dst, ent.Name()), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

// restoreDir makes dst hold exactly the files of src.
func restoreDir(t *testing.T, src, dst string) {
	t.Helper()
	if err := os.RemoveAll(dst); err != nil {
		t.Fatal(err)
	}
	copyDir(t, src, dst)
}

// A 'moat blocklist update' killed after the kernel took the new list but
// before the saved copy was written (blocklist.SaveResult comes last)
// leaves the kernel with the new list and the saved copy with the old
// one. The state is made exactly (the saved copies from before the update
// put back after it), then: an update back to the old list must load the
// old list into the kernel (its file equals the stale saved copy, so a
// comparison with the saved copy alone sees nothing to do), and an update
// to the new list must leave it. Real packets, both backends, IPv4 and
// IPv6; status sees no drift.
func TestBlocklistUpdateKilledBeforeSave(t *testing.T) {
	eachBackend(t, func(t *testing.T, b string) {
		e := newEnv(t, b, false)
		list := filepath.Join(e.dir, "bad.list")
		old := "192.0.2.3\n2001:db8::3\n"
		new := "192.0.2.4\n2001:db8::4\n"
		writeFile(t, list, old)
		e.apply(fmt.Sprintf("default deny incoming\nallow 80/tcp\nblocklist bad file %s\n", list))
		oldDrops := []string{
			"client/192.0.2.3 tcp 192.0.2.1:80 timeout", "client/2001:db8::3 tcp [2001:db8::1]:80 timeout",
			"client/192.0.2.4 tcp 192.0.2.1:80 open", "client/2001:db8::4 tcp [2001:db8::1]:80 open",
		}
		newDrops := []string{
			"client/192.0.2.3 tcp 192.0.2.1:80 open", "client/2001:db8::3 tcp [2001:db8::1]:80 open",
			"client/192.0.2.4 tcp 192.0.2.1:80 timeout", "client/2001:db8::4 tcp [2001:db8::1]:80 timeout",
		}
		e.expect(false, oldDrops...)
		saved := filepath.Join(e.stateDir(), "blocklists")
		before := filepath.Join(e.dir, "saved-before")

		// The killed update: the kernel has the new list, the saved
		// copy is the old one, and the marker the update wrote before
		// the kernel batch is there.
		killedAfterKernel := func() {
			writeFile(t, list, new)
			copyDir(t, saved, before)
			e.mustMoat("blocklist", "update")
			restoreDir(t, before, saved)
			writeFile(t, filepath.Join(e.stateDir(), "blocklist-update.pending"), "bad\n")
		}
		killedAfterKernel()
		e.expect(false, newDrops...)

		// Back to the old list.
		writeFile(t, list, old)
		e.mustMoat("blocklist", "update")
		e.expect(false, oldDrops...)
		e.expectStatusClean("status sees drift")

		// The same kill, then the new list again: loaded and kept.
		killedAfterKernel()
		out := e.mustMoat("blocklist", "update")
		e.expect(false, newDrops...)
		if got := strings.TrimSpace(e.mustMoat("blocklist", "update")); !strings.Contains(got, "unchanged") {
			t.Errorf("a third update of the same list:\n%s (the one before said %s)", got, out)
		}
		e.expectStatusClean("status sees drift")
	})
}

// shiftedList writes a list of n networks starting shift entries in
// (every other /32 of 100.64.0.0/10 and /64 of 2001:db8:f000::/36: set
// contents only, no packet goes there), plus the extra lines.
func shiftedList(t testing.TB, path string, n, shift int, extra ...string) {
	t.Helper()
	var b strings.Builder
	for i := shift; i < shift+n/2; i++ {
		a := 0x64400000 + 2*uint32(i)
		fmt.Fprintf(&b, "%d.%d.%d.%d\n", a>>24, a>>16&0xff, a>>8&0xff, a&0xff)
		fmt.Fprintf(&b, "2001:db8:f%03x:%x::/64\n", (2*i)>>16&0xfff, (2*i)&0xffff)
	}
	for _, l := range extra {
		b.WriteString(l + "\n")
	}
	writeFile(t, path, b.String())
}

// blocklistSets is the kernel's blocklist sets as sorted lines, without
// what a reload changes besides their members.
func (e *env) blocklistSets(name string) string {
	e.t.Helper()
	var out string
	if e.backend == "nftables" {
		out = e.run("server", "nft", "list", "set", "inet", "moat", "bl4_"+name) + e.run("server", "nft", "list", "set", "inet", "moat", "bl6_"+name)
	} else {
		out = e.run("server", "ipset", "list")
	}
	var keep []string
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, "Size in memory") || strings.Contains(l, "References") || strings.Contains(l, "Name:") {
			continue
		}
		keep = append(keep, strings.TrimSpace(l))
	}
	slices.Sort(keep)
	return strings.Join(keep, "\n")
}

// 'moat blocklist update' killed with SIGKILL at random points of an
// update between two 20k-entry lists (the check, the kernel batch, the
// saved copy's write), then run again to the end with the list file at
// the old or the new contents: the kernel's sets are then those a fresh
// reload of that file loads, real packets agree, and status sees no
// drift. Both backends.
func TestBlocklistUpdateKilled(t *testing.T) {
	eachBackend(t, func(t *testing.T, b string) {
		e := newEnv(t, b, false)
		list := filepath.Join(e.dir, "bad.list")
		lists := []func(){
			func() { shiftedList(t, list, 20_000, 0, "192.0.2.3", "2001:db8::3") },
			func() { shiftedList(t, list, 20_000, 3_000, "192.0.2.4", "2001:db8::4") },
		}
		probes := [][]string{{
			"client/192.0.2.3 tcp 192.0.2.1:80 timeout", "client/2001:db8::3 tcp [2001:db8::1]:80 timeout",
			"client/192.0.2.4 tcp 192.0.2.1:80 open", "client/2001:db8::4 tcp [2001:db8::1]:80 open",
		}, {
			"client/192.0.2.3 tcp 192.0.2.1:80 open", "client/2001:db8::3 tcp [2001:db8::1]:80 open",
			"client/192.0.2.4 tcp 192.0.2.1:80 timeout", "client/2001:db8::4 tcp [2001:db8::1]:80 timeout",
		}}
		lists[0]()
		e.apply(fmt.Sprintf("default deny incoming\nallow 80/tcp\nblocklist bad file %s\n", list))
		lists[1]()
		took, rng := e.timedMoat(7, "blocklist", "update")
		cur := 1
		for k := 0; k < 8; k++ {
			next := 1 - cur
			lists[next]()
			delay := time.Duration(rng.Int64N(int64(took) * 6 / 5))
			exited := e.killMoatAfter(delay, "blocklist", "update")
			// The file stays at the new list, or goes back.
			final := next
			if rng.IntN(2) == 0 {
				final = cur
				lists[final]()
			}
			out := e.mustMoat("blocklist", "update")
			e.expect(false, probes[final]...)
			got := e.blocklistSets("bad")
			e.mustMoat("reload")
			if want := e.blocklistSets("bad"); got != want {
				t.Fatalf("kill %d after %v (exited: %v), file at list %d: the sets after the update differ from a reload's (%d and %d bytes); the update said:\n%s",
					k, delay, exited, final, len(got), len(want), out)
			}
			if st := e.mustMoat("status"); strings.Contains(st, "changed outside moat") {
				t.Fatalf("kill %d: status sees drift:\n%s", k, st)
			}
			cur = final
		}
		// What a kill left beside the lists' copies is gone after the
		// next command (the last reload).
		e.expectNoTemps("after the kills, an update and a reload")
		t.Logf("an update took %v", took)
	})
}

// Two 'moat blocklist update' at once, on lists whose saved copies are in
// moat's canonical form (the line-by-line comparison): one updates every
// list, the other one list (in the last round, the file of that list
// changes again while they run). Afterwards the kernel's sets are those of a reload, the
// saved copies are the files' contents (a further update finds nothing
// changed), real packets agree and status sees no drift. Both backends.
func TestBlocklistUpdateTwoAtOnce(t *testing.T) {
	eachBackend(t, func(t *testing.T, b string) {
		e := newEnv(t, b, false)
		la, lb := filepath.Join(e.dir, "a.list"), filepath.Join(e.dir, "b.list")
		shiftedList(t, la, 20_000, 0, "192.0.2.3")
		shiftedList(t, lb, 20_000, 50_000, "2001:db8::3")
		e.apply(fmt.Sprintf("default deny incoming\nallow 80/tcp\nblocklist a file %s\nblocklist b file %s\n", la, lb))
		waited := 0 // rounds in which one update waited for the other's lock
		for round := 0; round < 3; round++ {
			// Each round moves the probe addresses between the lists.
			v4, v6 := "192.0.2.4", "2001:db8::4"
			if round%2 == 1 {
				v4, v6 = "192.0.2.3", "2001:db8::3"
			}
			shiftedList(t, la, 20_000, 1000*(round+1), v6)
			shiftedList(t, lb, 20_000, 50_000+1000*(round+1), v4)
			errs := make(chan error, 2)
			outs := make([]string, 2)
			for i, args := range [][]string{{"blocklist", "update"}, {"blocklist", "update", "a"}} {
				go func() {
					var err error
					outs[i], err = e.moat(args...)
					errs <- err
				}()
			}
			// In the last round the file of a changes again while they
			// run.
			last := round == 2
			if last {
				time.Sleep(100 * time.Millisecond)
				shiftedList(t, la, 20_000, 1000*(round+1)+500, v6)
			}
			for range 2 {
				if err := <-errs; err != nil {
					t.Fatalf("round %d: an update failed: %v\n%s\n%s", round, err, outs[0], outs[1])
				}
			}
			if strings.Contains(outs[0]+outs[1], "waiting for another blocklist update") {
				waited++
			}
			if last {
				// The last change of a may have come after both read it.
				e.mustMoat("blocklist", "update")
			}
			if out := e.mustMoat("blocklist", "update"); strings.Count(out, "unchanged") != 2 {
				t.Errorf("round %d: an update after both changed something:\n%s", round, out)
			}
			other4, other6 := "192.0.2.3", "2001:db8::3"
			if round%2 == 1 {
				other4, other6 = "192.0.2.4", "2001:db8::4"
			}
			e.expect(false,
				"client/"+v4+" tcp 192.0.2.1:80 timeout", "client/"+v6+" tcp [2001:db8::1]:80 timeout",
				"client/"+other4+" tcp 192.0.2.1:80 open", "client/"+other6+" tcp [2001:db8::1]:80 open")
			got := e.blocklistSets("a") + e.blocklistSets("b")
			if st := e.mustMoat("status"); strings.Contains(st, "changed outside moat") {
				t.Fatalf("round %d: status sees drift:\n%s", round, st)
			}
			e.mustMoat("reload")
			if want := e.blocklistSets("a") + e.blocklistSets("b"); got != want {
				t.Fatalf("round %d: the sets after the updates differ from a reload's (%d and %d bytes)", round, len(got), len(want))
			}
		}
		// Each takes hundreds of milliseconds and they start together:
		// that neither ever waited means they ran at the same time.
		if waited == 0 {
			t.Error("no update waited for the other: the updates are not kept apart")
		}
	})
}

// A 'moat blocklist update' killed (SIGKILL) exactly when it removes its
// journal: the kernel has the new list and the applied record is the
// update's, but the journal says the command did not finish. strace
// kills it at that unlink (nothing else in the test's timing decides
// the step). The next update first undoes the killed one (the record of
// before comes back) and must still load its list, from the file at the
// new contents or back at the old: the undo is its own repair, not
// another command's apply while the file was read. Real packets, both
// backends, IPv4 and IPv6; the sets are a reload's, status sees no drift.
func TestBlocklistUpdateKilledAtJournalRemoval(t *testing.T) {
	if _, err := exec.LookPath("strace"); err != nil {
		t.Fatalf("strace is needed (scripts/setup.sh installs it): %v", err)
	}
	eachBackend(t, func(t *testing.T, b string) {
		e := newEnv(t, b, false)
		list := filepath.Join(e.dir, "bad.list")
		old := "192.0.2.3\n2001:db8::3\n"
		new := "192.0.2.4\n2001:db8::4\n"
		drops := map[string][]string{old: {
			"client/192.0.2.3 tcp 192.0.2.1:80 timeout", "client/2001:db8::3 tcp [2001:db8::1]:80 timeout",
			"client/192.0.2.4 tcp 192.0.2.1:80 open", "client/2001:db8::4 tcp [2001:db8::1]:80 open",
		}, new: {
			"client/192.0.2.3 tcp 192.0.2.1:80 open", "client/2001:db8::3 tcp [2001:db8::1]:80 open",
			"client/192.0.2.4 tcp 192.0.2.1:80 timeout", "client/2001:db8::4 tcp [2001:db8::1]:80 timeout",
		}}
		writeFile(t, list, old)
		e.apply(fmt.Sprintf("default deny incoming\nallow 80/tcp\nblocklist bad file %s\n", list))
		e.expect(false, drops[old]...)
		intent := filepath.Join(e.stateDir(), "intent.json")
		applied := filepath.Join(e.stateDir(), "applied.json")
		cur, next := old, new
		// The file stays at the killed update's list, then goes back.
		for _, back := range []bool{false, true} {
			writeFile(t, list, next)
			recBefore, err := os.ReadFile(applied)
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
			args := []string{"-f", "-qq", "-o", "/dev/null", "-P", intent, "-e", "trace=unlink,unlinkat",
				"-e", "inject=unlink,unlinkat:error=EIO:signal=SIGKILL",
				moatBin, "--config", e.conf, "--backend", b, "--state-dir", e.stateDir(), "blocklist", "update"}
			out, err := e.topo.Server.Run(ctx, "strace", args...)
			cancel()
			if err == nil {
				t.Fatalf("the update was not killed at the journal's removal:\n%s", out)
			}
			if _, err := os.Lstat(intent); err != nil {
				t.Fatalf("the killed update left no journal (%v):\n%s", err, out)
			}
			if rec, err := os.ReadFile(applied); err != nil || string(rec) == string(recBefore) {
				t.Fatalf("the killed update did not write its applied record (%v): not the step this test is about", err)
			}
			e.expect(false, drops[next]...)
			final := next
			if back {
				final = cur
				writeFile(t, list, final)
			}
			out2 := e.mustMoat("blocklist", "update")
			if _, err := os.Lstat(intent); err == nil {
				t.Fatalf("the journal is still there after the update:\n%s", out2)
			}
			e.expect(false, drops[final]...)
			got := e.blocklistSets("bad")
			e.mustMoat("reload")
			if want := e.blocklistSets("bad"); got != want {
				t.Fatalf("the sets after the update differ from a reload's:\n%s\nreload:\n%s\nthe update said:\n%s", got, want, out2)
			}
			if st := e.mustMoat("status"); strings.Contains(st, "changed outside moat") {
				t.Fatalf("status sees drift:\n%s", st)
			}
			cur, next = final, old
			if cur == old {
				next = new
			}
		}
	})
}
