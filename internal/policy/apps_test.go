package policy

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func testApps(t *testing.T) Apps {
	t.Helper()
	apps, warns := LoadApps([]string{"testdata/apps", filepath.Join(t.TempDir(), "missing")})
	if len(warns) != 5 {
		t.Errorf("warnings: %d, want 5 (broken range, bad proto, numeric name, no ports, bad name):\n%s", len(warns), strings.Join(warns, "\n"))
	}
	for _, w := range warns {
		if !strings.Contains(w, "testdata/apps/profiles:") {
			t.Errorf("warning does not name the file and line: %s", w)
		}
	}
	return apps
}

func TestLoadApps(t *testing.T) {
	apps := testApps(t)
	if got, want := apps.Names(), []string{"Bind9", "Nginx Full", "OpenSSH", "Samba"}; !slices.Equal(got, want) {
		t.Fatalf("names %q, want %q", got, want)
	}
	s := apps["Samba"]
	if len(s.Parts) != 2 || s.Parts[0].Proto != "udp" || s.Parts[0].Ports.String() != "137,138" || s.Parts[1].Ports.String() != "139,445" {
		t.Errorf("Samba parts: %+v", s.Parts)
	}
	if apps["Bind9"].Parts[0].Proto != "any" {
		t.Errorf("Bind9: %+v", apps["Bind9"].Parts)
	}
}

func TestLoadAppsLaterDirWins(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "ssh"), []byte("[OpenSSH]\nports=2222/tcp\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	// Leftovers of editors and dpkg are not read.
	if err := os.WriteFile(filepath.Join(dir, "ssh.dpkg-old"), []byte("[Old]\nports=1/tcp\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	apps, _ := LoadApps([]string{"testdata/apps", dir})
	if got := apps["OpenSSH"].PortsText; got != "2222/tcp" {
		t.Errorf("OpenSSH: %s, want moat's own 2222/tcp", got)
	}
	if _, ok := apps["Old"]; ok {
		t.Error("a .dpkg-old file was read")
	}
}

func parseWithApps(t *testing.T, apps Apps, line string) (Statement, error) {
	t.Helper()
	toks, err := Lex(line)
	if err != nil {
		t.Fatal(err)
	}
	return ParseStatementApps(toks, Pos{File: "moat.conf", Line: 1}, testServices, apps)
}

func TestAppRules(t *testing.T) {
	apps := testApps(t)
	cases := []struct {
		line string
		want []string // summaries of the rule and its More
		app  string
	}{
		{"allow OpenSSH", []string{"in allow tcp any any any 22 inet"}, "OpenSSH"},
		{"allow 'Nginx Full'", []string{"in allow tcp any any any 80,443 inet"}, "Nginx Full"},
		{"limit OpenSSH comment 'admins'", []string{"in limit tcp any any any 22 inet comment=admins rate=6/30"}, "OpenSSH"},
		{"allow Samba", []string{"in allow udp any any any 137,138 inet", "in allow tcp any any any 139,445 inet"}, "Samba"},
		{"allow Bind9", []string{"in allow any any any any 53 inet"}, "Bind9"},
		{"allow from 198.51.100.0/24 to any app Samba", []string{"in allow udp 198.51.100.0/24 any any 137,138 ip", "in allow tcp 198.51.100.0/24 any any 139,445 ip"}, "Samba"},
		{"allow from any app OpenSSH to 2001:db8::/32 app OpenSSH", []string{"in allow tcp any 22 2001:db8::/32 22 ip6"}, "OpenSSH"},
		{"route allow OpenSSH", []string{"route allow tcp any any any 22 inet"}, "OpenSSH"},
		// A service of the same name wins, as in ufw.
		{"allow ssh", []string{"in allow tcp any any any 22 inet"}, ""},
	}
	for _, c := range cases {
		st, err := parseWithApps(t, apps, c.line)
		if err != nil {
			t.Errorf("%s: %v", c.line, err)
			continue
		}
		var got []string
		for _, r := range append([]Rule{st.Rule}, st.More...) {
			got = append(got, summary(r))
		}
		if !slices.Equal(got, c.want) {
			t.Errorf("%s:\n got %q\nwant %q", c.line, got, c.want)
		}
		if st.Rule.ToApp != c.app && st.Rule.FromApp != c.app {
			t.Errorf("%s: app %q/%q, want %q", c.line, st.Rule.FromApp, st.Rule.ToApp, c.app)
		}
	}
}

func TestAppRuleErrors(t *testing.T) {
	apps := testApps(t)
	cases := []struct{ line, want string }{
		{"allow OpenSSh", "moat.conf:1:7: unknown application profile or service 'OpenSSh': did you mean 'OpenSSH'?"},
		{"allow nginx", "did you mean 'Nginx Full'?"},
		{"allow Postgres", "unknown application profile or service 'Postgres': expected a port (22/tcp), a service from /etc/services (ssh) or a profile ('moat app list')"},
		{"allow to any app Nope", "moat.conf:1:18: unknown application profile 'Nope': 'moat app list' lists the profiles"},
		{"allow proto tcp to any app OpenSSH", "'proto' cannot go with 'app'"},
		{"allow to any app OpenSSH port 22", "'port' given twice for 'to'"},
		{"allow to any app", "'app' needs a profile name"},
		{"allow OpenSSH extra", "unexpected 'extra' after 'OpenSSH'"},
	}
	for _, c := range cases {
		_, err := parseWithApps(t, apps, c.line)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want %q", c.line, err, c.want)
		}
	}
}

func TestAppRuleFollowsTheProfile(t *testing.T) {
	d := NewDocument("moat.conf", []byte("allow OpenSSH\nallow Samba\nallow 80/tcp\n"))
	d.Apps = AppsFromPorts(map[string]string{"OpenSSH": "22/tcp", "Samba": "137,138/udp|139,445/tcp"})
	p, err := d.Policy(testServices)
	if err != nil {
		t.Fatal(err)
	}
	if p.NumRules() != 4 || p.Rule(0).ToPort.String() != "22" || p.Rule(1).Pos.Line != 2 || p.Rule(2).Pos.Line != 2 || p.Rule(2).Text != "allow Samba" {
		t.Fatalf("rules: %+v", p.AllRules())
	}
	d.Apps = AppsFromPorts(map[string]string{"OpenSSH": "2222/tcp", "Samba": "445/tcp"})
	p, err = d.Policy(testServices)
	if err != nil {
		t.Fatal(err)
	}
	if p.NumRules() != 3 || p.Rule(0).ToPort.String() != "2222" {
		t.Fatalf("after the profile changed: %+v", p.AllRules())
	}
	// Deleting by text tells a profile rule from a port rule.
	if n := d.FindRule(Rule{Direction: In, Action: Allow, Proto: "tcp", ToPort: Ports{{2222, 2222}}, Family: FamilyAny}, testServices); n != 0 {
		t.Errorf("'allow 2222/tcp' found as rule %d, the profile rule", n)
	}
	// A removed profile is an error naming the line.
	d.Apps = Apps{}
	if _, err := d.Policy(testServices); err == nil || !strings.Contains(err.Error(), "moat.conf:1:7: unknown application profile or service 'OpenSSH'") {
		t.Errorf("removed profile: %v", err)
	}
}

func TestNormalizeNetmask(t *testing.T) {
	for in, want := range map[string]string{
		"10.0.0.1/255.255.255.0":     "10.0.0.0/24",
		"192.0.2.77/255.255.255.192": "192.0.2.64/26",
		"10.0.0.1/255.255.255.255":   "10.0.0.1/32",
	} {
		if got, ok := NormalizeNetmask(in); !ok || got != want {
			t.Errorf("%s: %q %v, want %s", in, got, ok, want)
		}
	}
	for _, in := range []string{"10.0.0.1/24", "10.0.0.1", "10.0.0.1/255.0.255.0", "any", "2001:db8::/255.255.0.0"} {
		if got, ok := NormalizeNetmask(in); ok {
			t.Errorf("%s: normalized to %q", in, got)
		}
	}
}

func FuzzParseApps(f *testing.F) {
	data, err := os.ReadFile("testdata/apps/profiles")
	if err != nil {
		f.Fatal(err)
	}
	f.Add(data)
	f.Add([]byte("[x]\nports=1:65535/tcp|1,2,3,4,5,6,7,8,9,10,11,12,13,14,15/udp\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		apps, _ := ParseApps("fuzz", data)
		for _, a := range apps {
			if checkAppName(a.Name) != "" || len(a.Parts) == 0 {
				t.Fatalf("bad profile accepted: %+v", a)
			}
			for _, p := range a.Parts {
				for _, r := range p.Ports {
					if r.First == 0 || r.Last < r.First {
						t.Fatalf("bad ports accepted: %+v", a)
					}
				}
			}
		}
	})
}
