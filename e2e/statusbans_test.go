package e2e

import (
	"strings"
	"testing"
)

// A ban the history does not record (the port scan trap's, which the
// kernel adds; here written by hand as the trap writes it) is counted by
// 'moat status verbose', as 'moat bans' lists it: it said "0 active
// bans". nftables: its dump of the ban sets stops at a bound.
func TestStatusCountsUnrecordedBan(t *testing.T) {
	e := onBackend(t, "nftables")
	e.apply("default deny incoming\nallow 22/tcp\n")
	if out := e.mustMoat("status", "verbose"); !strings.Contains(out, "0 active bans") {
		t.Fatalf("status before the ban:\n%s", out)
	}
	e.run("server", "nft", "add", "element", "inet", "moat", "ban4", "{ 203.0.113.7 timeout 1h }")
	if out := e.mustMoat("bans"); !strings.Contains(out, "203.0.113.7") {
		t.Fatalf("moat bans does not list the ban:\n%s", out)
	}
	if out := e.mustMoat("status", "verbose"); !strings.Contains(out, "; 1 active ban ") {
		t.Errorf("status does not count the ban:\n%s", out)
	}
}
