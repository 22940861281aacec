package e2e

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// A rollback of a --confirm change undoes the change, not the bans made
// or lifted while it waited: a ban made meanwhile stays (with real
// packets dropped), a ban lifted meanwhile stays lifted, a ban from before
// stays; the change's rule is gone. Both backends, IPv4 and IPv6.
func TestRollbackKeepsBansMadeMeanwhile(t *testing.T) {
	eachBackend(t, func(t *testing.T, b string) {
		e := newEnv(t, b, false)
		e.apply("default deny incoming\nallow 22/tcp\nallow 80/tcp\n")
		e.mustMoat("ban", "203.0.113.50", "2001:db8::50", "--for", "1h", "--reason", "before")
		e.mustMoat("ban", "203.0.113.51", "--for", "1h", "--reason", "lifted meanwhile")
		e.mustMoat("--confirm", "1h", "--no-wait", "allow", "443/tcp")
		e.expect(false, "client/192.0.2.2 tcp 192.0.2.1:443 open")
		e.mustMoat("ban", "192.0.2.3", "2001:db8::3", "--for", "1h", "--reason", "meanwhile")
		e.mustMoat("unban", "203.0.113.51")
		e.mustMoat("rollback")

		bans := e.bans()
		for _, a := range []string{"203.0.113.50", "2001:db8::50", "192.0.2.3", "2001:db8::3"} {
			if _, ok := bans[a]; !ok {
				t.Errorf("%s is no longer banned after the rollback: %+v", a, bans)
			}
		}
		if ban, ok := bans["192.0.2.3"]; ok && (!strings.Contains(ban.Reason, "meanwhile") || ban.SecondsLeft < 3000) {
			t.Errorf("the ban made meanwhile lost its reason or time: %+v", ban)
		}
		if _, ok := bans["203.0.113.51"]; ok {
			t.Errorf("the ban lifted meanwhile is back after the rollback")
		}
		e.expect(false,
			"client/192.0.2.3 tcp 192.0.2.1:80 timeout", "client/2001:db8::3 tcp [2001:db8::1]:80 timeout",
			"client/192.0.2.2 tcp 192.0.2.1:80 open", "client/2001:db8::2 tcp [2001:db8::1]:80 open",
			"client/192.0.2.2 tcp 192.0.2.1:443 timeout")
	})
}

// A --confirm change of backend rolled back: the old backend's rules come
// back from the snapshot, whose ban sets are empty since the snapshot
// holds their definitions only, and the bans in force (in the other
// backend's ban sets) are put in them: one made while the change waited
// (real packets dropped), not one lifted meanwhile. The snapshot's ban
// sets cannot be kept here (the change removed them), so this is the
// rollback's path that refills them. The change of backend carries the
// bans from before over to the new backend (a source banned before stays
// dropped while the change waits), and the rollback brings them back
// too. Both directions, IPv4 and IPv6.
func TestRollbackOfBackendChangeRefillsBans(t *testing.T) {
	eachBackendSwitch(t, func(t *testing.T, from, to string) {
		e := newEnv(t, from, false)
		plain := e.mustMoatPlain
		changeBackendWaiting(e, from, to)
		e.expect(false, "client/192.0.2.2 tcp 192.0.2.1:443 open",
			"client/192.0.2.4 tcp 192.0.2.1:80 timeout", "client/2001:db8::4 tcp [2001:db8::1]:80 timeout")
		plain("ban", "192.0.2.3", "2001:db8::3", "--for", "1h", "--reason", "meanwhile")
		plain("unban", "203.0.113.51")
		plain("rollback")

		expectBansAfterRollback(e)
	})
}

// A change of backend (the policy's backend line, 'moat reload') keeps the
// bans in force, with their time left and reason: a source banned before
// stays dropped after the switch, and after the switch back. Both
// directions, IPv4 and IPv6, real packets.
func TestBackendChangeKeepsBans(t *testing.T) {
	eachBackendSwitch(t, func(t *testing.T, from, to string) {
		e := newEnv(t, from, false)
		plain := e.mustMoatPlain
		policy := "default deny incoming\nallow 22/tcp\nallow 80/tcp\n"
		writeFile(t, e.conf, "backend "+from+"\n"+policy)
		plain("enable")
		plain("ban", "192.0.2.3", "2001:db8::3", "--for", "1h", "--reason", "before the switch")
		for _, now := range []string{to, from} {
			writeFile(t, e.conf, "backend "+now+"\n"+policy)
			plain("reload")
			bans := e.bans()
			for _, a := range []string{"192.0.2.3", "2001:db8::3"} {
				b, ok := bans[a]
				if !ok {
					t.Errorf("%s is no longer banned after the switch to %s: %+v", a, now, bans)
				} else if !strings.Contains(b.Reason, "before the switch") || b.SecondsLeft < 3000 || b.SecondsLeft > 3600 {
					t.Errorf("%s lost its reason or time in the switch to %s: %+v", a, now, b)
				}
			}
			e.expect(false,
				"client/192.0.2.3 tcp 192.0.2.1:80 timeout", "client/2001:db8::3 tcp [2001:db8::1]:80 timeout",
				"client/192.0.2.2 tcp 192.0.2.1:80 open", "client/2001:db8::2 tcp [2001:db8::1]:80 open")
		}
	})
}

// A --confirm change of backend whose snapshot is damaged on disk is
// rolled back by loading the policy applied before: that fallback loaded
// the old backend with empty ban sets and removed the new one's, losing
// every ban in force. They are carried back as the snapshot's restore
// carries them: banned before and meanwhile (real packets dropped), not
// one lifted meanwhile. Both directions, IPv4 and IPv6.
func TestRollbackFallbackOfBackendChangeKeepsBans(t *testing.T) {
	eachBackendSwitch(t, func(t *testing.T, from, to string) {
		e := newEnv(t, from, false)
		plain := e.mustMoatPlain
		changeBackendWaiting(e, from, to)
		plain("ban", "192.0.2.3", "2001:db8::3", "--for", "1h", "--reason", "meanwhile")
		plain("unban", "203.0.113.51")
		writeFile(t, filepath.Join(e.stateDir(), "pending.snapshot"), "damaged")
		out, err := e.moatPlain("rollback")
		if err != nil {
			t.Fatalf("moat rollback: %v\n%s", err, out)
		}
		if !strings.Contains(out, "loading the previous policy") {
			t.Errorf("the rollback did not take the fallback:\n%s", out)
		}
		expectBansAfterRollback(e)
	})
}

// A rollback cut after its restore (simulated as TestAdvRollbackCut-
// KeepsBansMadeAfterTheCut does: the records of the rollback put back,
// pending.bans as the cut one left it) is finished by the next 'moat
// rollback'. With a snapshot that holds the bans (an nftables text
// snapshot: a table with named objects, or one taken by an older moat,
// as here), an address lifted while the change waited and banned again
// after the cut ('moat ban', recorded in the guard's history) was lifted
// again by the finished rollback: its ban looked like the snapshot's
// copy of one lifted meanwhile. It stays banned (real packets dropped);
// one lifted and not banned again stays lifted. IPv4 and IPv6.
func TestRollbackCutKeepsAddressBannedAgain(t *testing.T) {
	requireBackend(t, "nftables")
	t.Parallel()
	e := newEnv(t, "nftables", false)
	e.apply("default deny incoming\nallow 22/tcp\nallow 80/tcp\n")
	e.mustMoat("ban", "192.0.2.3", "2001:db8::3", "--for", "1h", "--reason", "lifted meanwhile, banned again after the cut")
	e.mustMoat("ban", "203.0.113.51", "--for", "1h", "--reason", "lifted meanwhile")
	// The snapshot as an older moat took it: nft's listing, bans and all.
	text, err := e.topo.Server.Run(context.Background(), "nft", "list", "table", "inet", "moat")
	if err != nil {
		t.Fatalf("nft list table: %v\n%s", err, text)
	}
	e.mustMoat("--confirm", "1h", "--no-wait", "allow", "443/tcp")
	writeFile(t, filepath.Join(e.stateDir(), "pending.snapshot"), string(text))
	pj := filepath.Join(e.stateDir(), "pending.json")
	var pend map[string]any
	data, err := os.ReadFile(pj)
	if err != nil || json.Unmarshal(data, &pend) != nil {
		t.Fatalf("pending.json: %v\n%s", err, data)
	}
	sum := sha256.Sum256(text)
	pend["snapshot_sha256"] = hex.EncodeToString(sum[:])
	data, _ = json.Marshal(pend)
	writeFile(t, pj, string(data))

	e.mustMoat("unban", "192.0.2.3", "2001:db8::3", "203.0.113.51")
	saved := map[string][]byte{}
	for _, f := range []string{"pending.json", "pending.snapshot", "pending.policy"} {
		if data, err := os.ReadFile(filepath.Join(e.stateDir(), f)); err == nil {
			saved[f] = data
		}
	}
	e.mustMoat("rollback")
	for f, data := range saved {
		writeFile(t, filepath.Join(e.stateDir(), f), string(data))
	}
	// Cut after the restore: the kernel holds the snapshot's bans, and
	// pending.bans the bans in force when the rollback began.
	e.mustMoat("ban", "192.0.2.3", "2001:db8::3", "203.0.113.51", "--for", "1h", "--reason", "the snapshot's copy")
	writeFile(t, filepath.Join(e.stateDir(), "pending.bans"),
		fmt.Sprintf(`{"id":%q,"taken":%q,"bans":[]}`, pend["id"], time.Now().UTC().Format(time.RFC3339Nano)))
	// Only the guard's history tells the ban made again from the copy.
	time.Sleep(10 * time.Millisecond)
	if _, err := e.moat("ban", "192.0.2.3", "2001:db8::3", "--for", "2h", "--reason", "again"); err != nil {
		t.Fatal(err)
	}
	e.mustMoat("rollback")

	expectFinishedRollback(e, ", banned again after the cut,", "192.0.2.3", "2001:db8::3")
}

// expectFinishedRollback: after a cut rollback finished by the next one,
// each of banned is banned (how names them in the message), the ban of
// 203.0.113.51 lifted while the change waited is not back, and real
// packets agree: 192.0.2.3 and 2001:db8::3 dropped, 192.0.2.2 and
// 2001:db8::2 let in on port 80, port 443 (the change's) closed again.
func expectFinishedRollback(e *env, how string, banned ...string) {
	t := e.t
	t.Helper()
	bans := e.bans()
	for _, a := range banned {
		if _, ok := bans[a]; !ok {
			t.Errorf("%s%s is not banned after the finished rollback: %+v", a, how, bans)
		}
	}
	if _, ok := bans["203.0.113.51"]; ok {
		t.Errorf("the ban lifted while the change waited is back")
	}
	e.expect(false,
		"client/192.0.2.3 tcp 192.0.2.1:80 timeout", "client/2001:db8::3 tcp [2001:db8::1]:80 timeout",
		"client/192.0.2.2 tcp 192.0.2.1:80 open", "client/2001:db8::2 tcp [2001:db8::1]:80 open",
		"client/192.0.2.2 tcp 192.0.2.1:443 timeout")
}

// changeBackendWaiting enables the policy (SSH and port 80 allowed) on
// backend from, bans 192.0.2.4 and 2001:db8::4 ("before"), applies the
// policy with port 443 allowed on backend to with --confirm, not waiting,
// and bans 203.0.113.51 (for the test to lift while the change waits).
func changeBackendWaiting(e *env, from, to string) {
	e.t.Helper()
	policy := "default deny incoming\nallow 22/tcp\nallow 80/tcp\n"
	writeFile(e.t, e.conf, "backend "+from+"\n"+policy)
	e.mustMoatPlain("enable")
	e.mustMoatPlain("ban", "192.0.2.4", "2001:db8::4", "--for", "1h", "--reason", "before")
	writeFile(e.t, e.conf, "backend "+to+"\n"+policy+"allow 443/tcp\n")
	e.mustMoatPlain("--confirm", "1h", "--no-wait", "enable")
	e.mustMoatPlain("ban", "203.0.113.51", "--for", "1h", "--reason", "lifted meanwhile")
}

// expectBansAfterRollback: after the rollback of changeBackendWaiting's
// change, the bans from before (192.0.2.4, 2001:db8::4) and from while it
// waited (192.0.2.3, 2001:db8::3) are in force, with real packets
// dropped, 203.0.113.51 (lifted meanwhile) is not, and port 443 is closed
// again.
func expectBansAfterRollback(e *env) {
	e.t.Helper()
	bans := e.bans()
	for _, a := range []string{"192.0.2.3", "2001:db8::3", "192.0.2.4", "2001:db8::4"} {
		if _, ok := bans[a]; !ok {
			e.t.Errorf("%s is not banned after the rollback: %+v", a, bans)
		}
	}
	if _, ok := bans["203.0.113.51"]; ok {
		e.t.Errorf("the ban lifted meanwhile is back after the rollback")
	}
	e.expect(false,
		"client/192.0.2.3 tcp 192.0.2.1:80 timeout", "client/2001:db8::3 tcp [2001:db8::1]:80 timeout",
		"client/192.0.2.4 tcp 192.0.2.1:80 timeout", "client/2001:db8::4 tcp [2001:db8::1]:80 timeout",
		"client/192.0.2.2 tcp 192.0.2.1:80 open", "client/2001:db8::2 tcp [2001:db8::1]:80 open",
		"client/192.0.2.2 tcp 192.0.2.1:443 timeout")
}
