package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/moat-fw/moat/internal/lab"
)

// A 'moat blocklist update' fetches its lists before it takes the
// engine's lock. A reload in that time that takes the list from another
// source (here a file instead of the URL) must win: the update must not
// load the old URL's networks under the list's name. It fails, saying
// why, the kernel keeps the reload's list (real packets, IPv4 and IPv6),
// and the next update loads the new source. Both backends.
func TestAdvBlocklistSourceChangedDuringFetch(t *testing.T) {
	eachBackend(t, func(t *testing.T, b string) {
		e := newEnv(t, b, false)
		ls := e.startListServer()
		ls.set("/drop.txt", "192.0.2.3\n2001:db8::3\n", 0)
		file := e.newFile("b.netset", "192.0.2.4\n2001:db8::4\n")
		e.apply(fmt.Sprintf("default deny incoming\nallow 80/tcp\nblocklist drop url %s refresh 1h\n", ls.url("/drop.txt")))

		finish := updateHeldInFetch(e, ls)
		e.apply("default deny incoming\nallow 80/tcp\nblocklist drop file " + file + "\n")
		out, err := finish()
		if exitCode(err) != 1 || !strings.Contains(out, "run 'moat blocklist update' again") {
			t.Errorf("the update of the old source: exit %d, want 1 saying to run it again:\n%s", exitCode(err), out)
		}
		drops := []string{
			"client/192.0.2.3 tcp 192.0.2.1:80 open",
			"client/2001:db8::3 tcp [2001:db8::1]:80 open",
			"client/192.0.2.4 tcp 192.0.2.1:80 timeout",
			"client/2001:db8::4 tcp [2001:db8::1]:80 timeout",
		}
		e.expect(false, drops...)
		e.expectStatusClean("status sees drift")
		if out, err := e.moatTLS(ls, "blocklist", "update"); err != nil {
			t.Fatalf("the next update: %v\n%s", err, out)
		}
		e.expect(false, drops...)
		e.mustMoat("reload")
		e.expect(false, drops...)
	})
}

// A rollback cut short (kill -9) after it restored the snapshot leaves
// the snapshot's ban sets in the kernel, its record of the bans in force
// (pending.bans) and the pending change: the guard goes on banning. The
// rollback that finishes it restores the snapshot again: the bans made
// after the cut must stay, with the bans of the record; a ban lifted
// while the change waited stays lifted. The cut is made by putting the
// pending change's files back after a whole rollback, with the record it
// would have written. Both backends, IPv4 and IPv6, real packets.
func TestAdvRollbackCutKeepsBansMadeAfterTheCut(t *testing.T) {
	eachBackend(t, func(t *testing.T, b string) {
		e := newEnv(t, b, false)
		e.apply("default deny incoming\nallow 22/tcp\nallow 80/tcp\n")
		e.mustMoat("ban", "203.0.113.50", "2001:db8::50", "--for", "1h", "--reason", "before")
		e.mustMoat("ban", "203.0.113.51", "--for", "1h", "--reason", "lifted meanwhile")
		e.mustMoat("--confirm", "1h", "--no-wait", "allow", "443/tcp")
		e.mustMoat("ban", "192.0.2.3", "--for", "1h", "--reason", "meanwhile")
		e.mustMoat("unban", "203.0.113.51")

		saved := map[string][]byte{}
		for _, f := range []string{"pending.json", "pending.snapshot", "pending.policy"} {
			if data, err := os.ReadFile(filepath.Join(e.stateDir(), f)); err == nil {
				saved[f] = data
			}
		}
		var p struct {
			ID string `json:"id"`
		}
		if err := json.Unmarshal(saved["pending.json"], &p); err != nil || p.ID == "" {
			t.Fatalf("pending.json: %v\n%s", err, saved["pending.json"])
		}
		e.mustMoat("rollback")
		for f, data := range saved {
			writeFile(t, filepath.Join(e.stateDir(), f), string(data))
		}
		rec := fmt.Sprintf(`{"id":%q,"taken":%q,"bans":[{"addr":"203.0.113.50","left_ms":3600000,"reason":"before"},{"addr":"2001:db8::50","left_ms":3600000,"reason":"before"},{"addr":"192.0.2.3","left_ms":3600000,"reason":"meanwhile"}]}`,
			p.ID, time.Now().UTC().Format(time.RFC3339Nano))
		writeFile(t, filepath.Join(e.stateDir(), "pending.bans"), rec)

		// After the cut: the guard bans.
		e.mustMoat("ban", "198.51.100.9", "2001:db8::3", "--for", "1h", "--reason", "after the cut")
		e.mustMoat("rollback")

		expectFinishedRollback(e, "", "203.0.113.50", "2001:db8::50", "192.0.2.3", "198.51.100.9", "2001:db8::3")
	})
}

// A file list read by an update before a reload that read the edited
// file: the update, still fetching a URL list, must not load its older
// read over the reload's (it fails, saying to run it again); the kernel
// keeps the edited list; the next update loads both lists and equals a
// reload's sets. Both backends, IPv4 and IPv6, real packets.
func TestAdvBlocklistFileEditedDuringFetch(t *testing.T) {
	eachBackend(t, func(t *testing.T, b string) {
		e := newEnv(t, b, false)
		ls := e.startListServer()
		ls.set("/drop.txt", "198.51.100.7\n2001:db8:7::/48\n", 0)
		file := e.newFile("local.netset", "198.51.100.0/28\n")
		e.apply(fmt.Sprintf("default deny incoming\nallow 80/tcp\nblocklist local file %s\nblocklist drop url %s refresh 1h\n", file, ls.url("/drop.txt")))
		writeFile(t, file, "192.0.2.4\n2001:db8::4\n") // read by the update

		finish := updateHeldInFetch(e, ls)
		writeFile(t, file, "192.0.2.3\n2001:db8::3\n")
		e.mustMoat("reload")
		out, err := finish()
		if exitCode(err) != 1 || !strings.Contains(out, "run 'moat blocklist update' again") {
			t.Errorf("the update with the older read: exit %d, want 1 saying to run it again:\n%s", exitCode(err), out)
		}
		drops := []string{
			"client/192.0.2.3 tcp 192.0.2.1:80 timeout", "client/2001:db8::3 tcp [2001:db8::1]:80 timeout",
			"client/192.0.2.4 tcp 192.0.2.1:80 open", "client/2001:db8::4 tcp [2001:db8::1]:80 open",
			"client/192.0.2.2 tcp 192.0.2.1:80 open",
		}
		e.expect(false, drops...)
		if out, err := e.moatTLS(ls, "blocklist", "update"); err != nil {
			t.Fatalf("the next update: %v\n%s", err, out)
		}
		e.expect(false, drops...)
		sets := e.blocklistSets("local") + e.blocklistSets("drop")
		if !strings.Contains(sets, "198.51.100.7") || !strings.Contains(sets, "2001:db8:7::/48") {
			t.Errorf("the URL list is not loaded:\n%s", sets)
		}
		e.expectStatusClean("status sees drift")
		e.mustMoat("reload")
		if got := e.blocklistSets("local") + e.blocklistSets("drop"); got != sets {
			t.Errorf("a reload changes the sets:\n%s\nafter the update:\n%s", got, sets)
		}
		e.expect(false, drops...)
	})
}

// 'moat bans' with hostile --limit values refuses them (exit 1, no
// list); the counts of bans after unban and ban again are right in the
// limited list (counts read for the bans shown only), the whole list and
// --json (every ban, whatever --limit says); a ban made without --reason
// says "manual", not "manual: ". Both backends, IPv4 and IPv6.
func TestAdvBansLimitAndCounts(t *testing.T) {
	eachBackend(t, func(t *testing.T, b string) {
		e := newEnv(t, b, false)
		e.apply("default deny incoming\nallow 22/tcp\nallow 80/tcp\n")
		e.mustMoat("ban", "198.51.100.9", "2001:db8::3", "--for", "1h")
		e.mustMoat("unban", "198.51.100.9", "2001:db8::3")
		e.mustMoat("ban", "198.51.100.9", "2001:db8::3", "--for", "1h")
		e.mustMoat("unban", "2001:db8::3")
		e.mustMoat("ban", "2001:db8::3", "--for", "1h", "--reason", "again")
		e.mustMoat("ban", "192.0.2.3", "--for", "1h", "--reason", "once")

		for _, l := range []string{"0", "-1", "-9223372036854775808", "abc", "99999999999999999999", "1e3", " 5", ""} {
			out, err := e.moat("bans", "--limit", l)
			if exitCode(err) != 1 || strings.Contains(out, "ADDRESS") {
				t.Errorf("--limit %q: exit %d, want 1 and no list:\n%s", l, exitCode(err), out)
			}
		}
		want := map[string]int{"198.51.100.9": 2, "2001:db8::3": 3, "192.0.2.3": 1}
		for _, args := range [][]string{{"bans"}, {"bans", "--limit", "9223372036854775807"}, {"bans", "--all"}, {"bans", "--limit", "1"}, {"bans", "--limit", "2"}} {
			out := e.mustMoat(args...)
			shown := 0
			for _, line := range strings.Split(out, "\n") {
				f := strings.Fields(line)
				if len(f) < 4 || f[0] == "ADDRESS" || f[0] == "..." {
					continue
				}
				shown++
				if n, ok := want[f[0]]; !ok || f[2] != fmt.Sprint(n) {
					t.Errorf("moat %v: %q, want %d bans of %s", args, line, n, f[0])
				}
				if f[0] == "198.51.100.9" && (len(f) != 4 || f[3] != "manual") {
					t.Errorf("moat %v: the reason of a ban without --reason: %q", args, line)
				}
			}
			if n := len(want); args[len(args)-1] == "1" && shown != 1 || args[len(args)-1] == "2" && shown != 2 || len(args) == 1 && shown != n {
				t.Errorf("moat %v: %d bans shown\n%s", args, shown, out)
			}
		}
		for _, args := range [][]string{{"bans", "--json"}, {"bans", "--json", "--limit", "1"}} {
			var list []banJSON
			out := e.mustMoat(args...)
			if err := json.Unmarshal([]byte(out), &list); err != nil || len(list) != len(want) {
				t.Errorf("moat %v: %v, %d bans, want %d:\n%s", args, err, len(list), len(want), out)
			}
			for _, ban := range list {
				if ban.BanCount != want[ban.Address] {
					t.Errorf("moat %v: %+v, want %d bans", args, ban, want[ban.Address])
				}
			}
		}
		e.expect(false, "client/192.0.2.3 tcp 192.0.2.1:80 timeout", "client/2001:db8::3 tcp [2001:db8::1]:80 timeout",
			"client/192.0.2.2 tcp 192.0.2.1:80 open", "client/2001:db8::2 tcp [2001:db8::1]:80 open")
	})
}

// A file list edited on disk and not loaded yet is no change outside
// moat: the full comparison of the kernel with what moat applied (when
// the recorded fingerprint is lost) took the list from the file as it is
// now instead of the copy moat loaded, and said "changed outside moat"
// (and made the next apply a whole rewrite). A set changed by hand is
// still found. Both backends, IPv4 and IPv6.
func TestAdvEditedFileListIsNoDrift(t *testing.T) {
	eachBackend(t, func(t *testing.T, b string) {
		e := newEnv(t, b, false)
		file := e.applyLocalList()
		writeFile(t, file, "192.0.2.4\n2001:db8::4\n") // not loaded
		e.removeFingerprint()
		e.expectStatusClean("status sees drift")
		out, err := e.moat("allow", "8080/tcp")
		if err != nil || strings.Contains(out, "changed outside moat") {
			t.Errorf("an edit: %v\n%s", err, out)
		}
		e.expect(false, localListedFour...)
		// A set really changed by hand is still drift.
		e.removeFingerprint()
		if b == "nftables" {
			e.run("server", "nft", "add", "element", "inet", "moat", "bl4_local", "{ 198.51.100.1 }")
		} else {
			e.run("server", "ipset", "add", "moat-bl4_local", "198.51.100.1")
		}
		if st := e.mustMoat("status"); !strings.Contains(st, "changed outside moat") {
			t.Errorf("a set changed by hand is not drift:\n%s", st)
		}
	})
}

// A rollback of a --confirm change that loaded an edited list file puts
// back the list's saved copy with the kernel's older sets: status sees no
// drift, an update of the list file back to the old contents finds
// nothing to change and one with the edited contents loads them. Both
// backends, IPv4 and IPv6, real packets.
func TestAdvRollbackRestoresFileListCopy(t *testing.T) {
	eachBackend(t, func(t *testing.T, b string) {
		e := newEnv(t, b, false)
		file := e.applyLocalList()
		writeFile(t, file, "192.0.2.4\n2001:db8::4\n")
		e.mustMoat("--confirm", "1h", "--no-wait", "allow", "443/tcp")
		e.expect(false, "client/192.0.2.4 tcp 192.0.2.1:80 timeout", "client/192.0.2.3 tcp 192.0.2.1:80 open")
		e.mustMoat("rollback")
		old := localListedThree
		e.expect(false, old...)
		e.removeFingerprintIfAny()
		e.expectStatusClean("status after the rollback sees drift")
		writeFile(t, file, "192.0.2.3\n2001:db8::3\n")
		if out := e.mustMoat("blocklist", "update"); !strings.Contains(out, "unchanged") {
			t.Errorf("the list back at what the kernel holds:\n%s", out)
		}
		e.expect(false, old...)
		writeFile(t, file, "192.0.2.4\n2001:db8::4\n")
		e.mustMoat("blocklist", "update")
		e.expect(false, localListedFour...)
		e.expectStatusClean("status sees drift")
	})
}

// An apply refused (here for cutting the admin's live SSH session) after
// it read an edited list file leaves the list's saved copy as the kernel
// holds it: the copy was written before the check, so the next 'moat
// blocklist update' found the file equal to it ("unchanged") and never
// loaded the edited list. Both backends, IPv4 and IPv6, real packets.
func TestAdvRefusedApplyKeepsFileListCopy(t *testing.T) {
	eachBackend(t, func(t *testing.T, b string) {
		e := newSSHEnv(t, b)
		srv := e.startSSHD(22)
		file := e.applyLocalList()
		sess := srv.login(lab.ServerV6)
		writeFile(t, file, "192.0.2.4\n2001:db8::4\n")
		e.refused([]string{"would be dropped by line 2: deny 22/tcp"}, "deny", "22/tcp")
		out := e.mustMoat("blocklist", "update")
		if strings.Contains(out, "unchanged") {
			t.Errorf("the edited list is not loaded after the refused apply:\n%s", out)
		}
		e.expect(false, localListedFour...)
		if err := sess.alive(3 * time.Second); err != nil {
			t.Errorf("live session cut: %v", err)
		}
	})
}

// Lists that look merged and are not (two halves in a row, a network
// inside the one before, duplicates, IPv4-mapped IPv6, IPv6 before IPv4,
// networks out of order, a /32 next to its /31) and lists merged already:
// 'moat blocklist update' gives the kernel exactly what a reload of the
// same list gives, and real packets agree. Both backends.
func TestAdvBlocklistLooksMerged(t *testing.T) {
	eachBackend(t, func(t *testing.T, b string) {
		e := newEnv(t, b, false)
		file := e.newFile("l.netset", "198.51.100.0/24\n")
		e.apply("default deny incoming\nallow 80/tcp\nblocklist l file " + file + "\n")
		for i, list := range []string{
			"198.51.100.0/25\n198.51.100.128/25\n2001:db8:1::/49\n2001:db8:1:8000::/49\n",
			"192.0.2.0/30\n192.0.2.3\n192.0.2.4/31\n203.0.113.0/24\n203.0.113.0/24\n",
			"::ffff:192.0.2.0/126\n::ffff:192.0.2.4\n2001:db8::3\n",
			"2001:db8::4\n192.0.2.3\n",
			"192.0.2.4/32\n192.0.2.5/32\n192.0.2.6/31\n198.51.100.0/24\n",
			"192.0.2.0/29\n2001:db8::/125\n",
			"192.0.2.2/31\n192.0.2.4/30\n2001:db8::2/127\n2001:db8::4/126\n",
		} {
			writeFile(t, file, list)
			if out, err := e.moat("blocklist", "update"); err != nil {
				t.Fatalf("list %d: %v\n%s", i, err, out)
			}
			got := e.blocklistSets("l")
			e.mustMoat("reload")
			if want := e.blocklistSets("l"); got != want {
				t.Errorf("list %d: the update loaded\n%s\na reload loads\n%s", i, got, want)
			}
		}
		// The last list: 192.0.2.2 to .7 and 2001:db8::2 to ::7.
		e.expect(false,
			"client/192.0.2.2 tcp 192.0.2.1:80 timeout", "client/192.0.2.4 tcp 192.0.2.1:80 timeout",
			"client/2001:db8::3 tcp [2001:db8::1]:80 timeout", "client/2001:db8::4 tcp [2001:db8::1]:80 timeout")
		e.expectStatusClean("status sees drift")
	})
}

// applyLocalList applies a policy (deny incoming, allow 22/tcp and
// 80/tcp) with the blocklist "local" read from the file local.netset,
// which lists 192.0.2.3 and 2001:db8::3; it returns the file's path.
func (e *env) applyLocalList() string {
	e.t.Helper()
	file := e.newFile("local.netset", "192.0.2.3\n2001:db8::3\n")
	e.apply("default deny incoming\nallow 22/tcp\nallow 80/tcp\nblocklist local file " + file + "\n")
	return file
}

// localListedThree and localListedFour: real packets to port 80 when the
// list holds .3 (its first contents) or .4 (the edited ones), IPv4 and
// IPv6: the listed source dropped, the other one let through.
var (
	localListedThree = []string{
		"client/192.0.2.3 tcp 192.0.2.1:80 timeout", "client/2001:db8::3 tcp [2001:db8::1]:80 timeout",
		"client/192.0.2.4 tcp 192.0.2.1:80 open", "client/2001:db8::4 tcp [2001:db8::1]:80 open",
	}
	localListedFour = []string{
		"client/192.0.2.4 tcp 192.0.2.1:80 timeout", "client/2001:db8::4 tcp [2001:db8::1]:80 timeout",
		"client/192.0.2.3 tcp 192.0.2.1:80 open", "client/2001:db8::3 tcp [2001:db8::1]:80 open",
	}
)

// updateHeldInFetch starts 'moat blocklist update' and returns once its
// fetch from ls is held; finish lets the fetch (and those after it) go
// on and returns the update's output and error.
func updateHeldInFetch(e *env, ls *listServer) (finish func() (string, error)) {
	arrived, release := make(chan struct{}), make(chan struct{})
	ls.mu.Lock()
	ls.gate = func() { arrived <- struct{}{}; <-release }
	ls.mu.Unlock()
	type res struct {
		out string
		err error
	}
	done := make(chan res, 1)
	go func() {
		out, err := e.moatTLS(ls, "blocklist", "update")
		done <- res{out, err}
	}()
	<-arrived
	return func() (string, error) {
		ls.mu.Lock()
		ls.gate = nil
		ls.mu.Unlock()
		close(release)
		r := <-done
		return r.out, r.err
	}
}
