package policy

import (
	"strings"
	"testing"
	"time"
)

func TestBlocklistStatements(t *testing.T) {
	doc := NewDocument("moat.conf", []byte(`default deny incoming
blocklist drop url https://www.spamhaus.org/drop/drop.txt
blocklist edrop url https://www.spamhaus.org/drop/edrop.txt refresh 12h
blocklist local file "/etc/moat/lists/bad hosts.netset"
guard portscan ports 12 within 2m bantime 2h
`))
	p, err := doc.Policy(testServices)
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Blocklists) != 3 {
		t.Fatalf("got %d lists", len(p.Blocklists))
	}
	want := []Blocklist{
		{Name: "drop", Source: BlocklistURL, URL: "https://www.spamhaus.org/drop/drop.txt", Refresh: 24 * time.Hour},
		{Name: "edrop", Source: BlocklistURL, URL: "https://www.spamhaus.org/drop/edrop.txt", Refresh: 12 * time.Hour},
		{Name: "local", Source: BlocklistFile, Path: "/etc/moat/lists/bad hosts.netset"},
	}
	for i, w := range want {
		g := p.Blocklists[i]
		if g.Name != w.Name || g.Source != w.Source || g.URL != w.URL || g.Path != w.Path || g.Refresh != w.Refresh {
			t.Errorf("list %d: got %+v, want %+v", i, g, w)
		}
		if g.Pos.Line != i+2 {
			t.Errorf("list %d at line %d", i, g.Pos.Line)
		}
	}
	ps := p.Portscan
	if !ps.Enabled || ps.Ports != 12 || ps.Within != 2*time.Minute || ps.BanTime != 2*time.Hour {
		t.Errorf("portscan: %+v", ps)
	}
	if p.Guard.BanTime != DefaultGuard.BanTime {
		t.Errorf("the portscan bantime changed the sshd guard's: %v", p.Guard.BanTime)
	}
}

func TestPortscanDefaults(t *testing.T) {
	p, err := NewDocument("m", []byte("guard portscan\n")).Policy(nil)
	if err != nil {
		t.Fatal(err)
	}
	if want := DefaultPortscan; p.Portscan.Ports != want.Ports || p.Portscan.Within != want.Within || p.Portscan.BanTime != want.BanTime || !p.Portscan.Enabled {
		t.Errorf("got %+v", p.Portscan)
	}
	p, err = NewDocument("m", []byte("guard portscan ports 5\nguard portscan off\n")).Policy(nil)
	if err != nil || p.Portscan.Enabled {
		t.Errorf("off: %+v %v", p.Portscan, err)
	}
}

func TestBlocklistErrors(t *testing.T) {
	for _, tc := range []struct{ line, want string }{
		{"blocklist", "moat.conf:1:11: 'blocklist' needs a name"},
		{"blocklist drop", "moat.conf:1:16: blocklist 'drop' needs a source"},
		{"blocklist Drop url https://x/y", "1:11: bad blocklist name 'Drop'"},
		{"blocklist a_very_long_name_here url https://x/y", "too long"},
		{"blocklist 9x url https://x/y", "bad blocklist name"},
		{"blocklist x url http://example.org/drop.txt", "1:17: blocklist url 'http://example.org/drop.txt' must be https://"},
		{"blocklist x url https://user:pw@example.org/drop.txt", "may not hold a user name"},
		{"blocklist x url https:///drop.txt", "bad blocklist url"},
		{"blocklist x url", "'url' needs an https:// address"},
		{"blocklist x file", "'file' needs an absolute path"},
		{"blocklist x file lists/drop.txt", "must be an absolute path"},
		{"blocklist x ftp /a", "unknown blocklist source 'ftp'"},
		{"blocklist x url https://a/b refresh 10m", "invalid refresh '10m'"},
		{"blocklist x url https://a/b refresh", "'refresh' needs a duration"},
		{"blocklist x file /a refresh 1h", "unexpected 'refresh'"},
		{"blocklist x url https://a/b extra", "unexpected 'extra'"},
		{"guard portscan ports 1", "invalid ports '1'"},
		{"guard portscan ports 10 ports 11", "'ports' given twice"},
		{"guard portscan within 0s", "invalid within '0s'"},
		{"guard portscan bantime 30d", "invalid bantime '30d'"},
		{"guard portscan maxretry 3", "unknown portscan setting 'maxretry'"},
		{"guard portscan within", "'within' needs a window"},
	} {
		_, err := NewDocument("moat.conf", []byte(tc.line+"\n")).Policy(nil)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: got %v, want %q", tc.line, err, tc.want)
		}
	}
	_, err := NewDocument("moat.conf", []byte("blocklist x file /a\n\nblocklist x url https://a/b\n")).Policy(nil)
	if err == nil || !strings.Contains(err.Error(), "moat.conf:3:1: blocklist 'x' is defined twice (first at line 1)") {
		t.Errorf("duplicate: %v", err)
	}
}
