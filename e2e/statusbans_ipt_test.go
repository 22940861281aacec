package e2e

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/moat-fw/moat/internal/lab"
)

// On iptables, the port scan trap's bans (the kernel adds them to moat's
// ban ipsets; the ban history does not record them) are counted by
// 'moat status verbose', as 'moat bans' lists them: it said "0 active
// bans". A real scan from the client namespace, IPv4 and IPv6.
func TestStatusCountsTrapBanIptables(t *testing.T) {
	e := onBackend(t, "iptables")
	e.apply("default deny incoming\nallow 80/tcp\nguard portscan ports 10 within 60s bantime 1h\n")
	if out := e.mustMoat("status", "verbose"); !strings.Contains(out, "0 active bans") {
		t.Fatalf("status before the scan:\n%s", out)
	}
	e.connectScan(netip.MustParseAddr("192.0.2.3"), lab.ServerV4, 20)
	bans := e.bans()
	if _, ok := bans["192.0.2.3"]; !ok || len(bans) != 1 {
		t.Fatalf("moat bans after an IPv4 scan: %v, want 192.0.2.3 alone", bans)
	}
	if out := e.mustMoat("status", "verbose"); !strings.Contains(out, "; 1 active ban ") {
		t.Errorf("status does not count the IPv4 trap ban:\n%s", out)
	}
	e.connectScan(netip.MustParseAddr("2001:db8::3"), lab.ServerV6, 20)
	if _, ok := e.bans()["2001:db8::3"]; !ok {
		t.Fatal("IPv6 scan not banned")
	}
	if out := e.mustMoat("status", "verbose"); !strings.Contains(out, "; 2 active bans") {
		t.Errorf("status does not count both trap bans:\n%s", out)
	}
}
