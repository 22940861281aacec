package e2e

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// moatHost runs moat outside any namespace, for commands that touch no
// kernel state (dry runs, explain, show).
func moatHost(t *testing.T, conf string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(moatBin, append([]string{"--config", conf}, args...)...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func TestDryRunJSON(t *testing.T) {
	t.Parallel()
	conf := filepath.Join(t.TempDir(), "moat.conf")
	cases := []struct {
		args []string
		want map[string]any
	}{
		{[]string{"allow", "22/tcp"}, map[string]any{"action": "allow", "direction": "in", "interface_in": "", "interface_out": "",
			"proto": "tcp", "from": "any", "from_port": "any", "to": "any", "to_port": "22", "family": "inet", "comment": ""}},
		{[]string{"deny", "from", "203.0.113.0/24"}, map[string]any{"action": "deny", "direction": "in", "interface_in": "", "interface_out": "",
			"proto": "any", "from": "203.0.113.0/24", "from_port": "any", "to": "any", "to_port": "any", "family": "ip", "comment": ""}},
		{[]string{"allow", "proto", "tcp", "from", "198.51.100.7", "to", "any", "port", "80,443", "comment", "web proxy"},
			map[string]any{"action": "allow", "direction": "in", "interface_in": "", "interface_out": "", "proto": "tcp",
				"from": "198.51.100.7/32", "from_port": "any", "to": "any", "to_port": "80,443", "family": "ip", "comment": "web proxy"}},
		{[]string{"reject", "out", "on", "eth0", "to", "2001:db8::/32", "port", "6000:6007", "proto", "udp"},
			map[string]any{"action": "reject", "direction": "out", "interface_in": "", "interface_out": "eth0", "proto": "udp",
				"from": "any", "from_port": "any", "to": "2001:db8::/32", "to_port": "6000:6007", "family": "ip6", "comment": ""}},
		{[]string{"route", "allow", "in", "on", "eth1", "out", "on", "eth2"},
			map[string]any{"action": "allow", "direction": "route", "interface_in": "eth1", "interface_out": "eth2", "proto": "any",
				"from": "any", "from_port": "any", "to": "any", "to_port": "any", "family": "inet", "comment": ""}},
	}
	for _, c := range cases {
		out, err := moatHost(t, conf, append([]string{"--dry-run", "--json"}, c.args...)...)
		if err != nil {
			t.Fatalf("%v: %v\n%s", c.args, err, out)
		}
		var got map[string]any
		if err := json.Unmarshal([]byte(out), &got); err != nil {
			t.Fatalf("%v: not one JSON object: %v\n%s", c.args, err, out)
		}
		for k, v := range c.want {
			if !reflect.DeepEqual(got[k], v) {
				t.Errorf("%v: %s = %#v, want %#v", c.args, k, got[k], v)
			}
		}
	}
	limit, _ := moatHost(t, conf, "--dry-run", "--json", "limit", "ssh")
	if !strings.Contains(limit, `"action": "limit"`) || !strings.Contains(limit, `"to_port": "22"`) {
		t.Errorf("limit ssh: %s", limit)
	}
	if _, err := os.Stat(conf); !os.IsNotExist(err) {
		t.Errorf("a dry run wrote the policy file")
	}
}

func TestBadInputChangesNothing(t *testing.T) {
	requireBackend(t, "nftables")
	t.Parallel()
	e := newEnv(t, "nftables", false)
	e.apply("# admins\ndefault deny incoming\nallow 22/tcp\n")
	ruleset := e.run("server", "nft", "-s", "list", "ruleset")
	file, _ := os.ReadFile(e.conf)

	for _, args := range [][]string{
		{"allow", "99999"}, {"allow", "80,443"}, {"allow", "from", "192.0.2.1", "to", "2001:db8::1"},
		{"allow", "frobnicate"}, {"deny", "proto", "esp", "to", "any", "port", "22"}, {"delete", "7"},
		{"insert", "0", "allow", "80"}, {"default", "permit"},
	} {
		out, err := e.moat(args...)
		if err == nil {
			t.Errorf("moat %v succeeded:\n%s", args, out)
		}
		if !strings.Contains(out, "moat: ") {
			t.Errorf("moat %v: no error message:\n%s", args, out)
		}
	}
	bad := "# admins\ndefault deny incoming\nallow 22/tcp\nallow 80/tcp comment 'web'\ndeny from 203.0.113.300\n"
	writeFile(t, e.conf, bad)
	out, err := e.moat("enable")
	if err == nil || !strings.Contains(out, e.conf+":5:11: bad address '203.0.113.300'") {
		t.Errorf("invalid file: err %v, output:\n%s", err, out)
	}
	if after := e.run("server", "nft", "-s", "list", "ruleset"); after != ruleset {
		t.Errorf("the kernel ruleset changed after refused input:\nbefore:\n%s\nafter:\n%s", ruleset, after)
	}
	writeFile(t, e.conf, string(file))
	e.expect(false, "client tcp 192.0.2.1:22 open", "client tcp 192.0.2.1:80 timeout")
}

func TestEditCommandsApplyLive(t *testing.T) {
	eachBackend(t, func(t *testing.T, b string) {
		e := newEnv(t, b, false)
		writeFile(t, e.conf, "# my server\ndefault deny incoming\n\n# ssh for admins\nallow 22/tcp\n")
		e.mustMoat("enable")
		e.expect(false, "client tcp 192.0.2.1:80 timeout")

		e.mustMoat("allow", "80/tcp", "comment", "web server")
		e.expect(false, "client tcp 192.0.2.1:80 open", "client tcp [2001:db8::1]:80 open")
		if out := e.mustMoat("allow", "80/tcp", "comment", "web server"); !strings.Contains(out, "Skipping adding existing rule") {
			t.Errorf("duplicate rule: %s", out)
		}
		e.mustMoat("insert", "1", "deny", "from", "192.0.2.3")
		e.mustMoat("prepend", "deny", "from", "2001:db8::3")
		e.expect(false, "client/192.0.2.3 tcp 192.0.2.1:80 timeout", "client/2001:db8::3 tcp [2001:db8::1]:80 timeout",
			"client/192.0.2.2 tcp 192.0.2.1:80 open")

		numbered := e.mustMoat("status", "numbered")
		for _, want := range []string{"[ 1] Anywhere (v6)", "2001:db8::3", "[ 2] Anywhere", "192.0.2.3", "[ 3] 22/tcp", "[ 4] 80/tcp", "# web server"} {
			if !strings.Contains(numbered, want) {
				t.Errorf("status numbered lacks %q:\n%s", want, numbered)
			}
		}
		e.mustMoat("delete", "2")
		e.mustMoat("delete", "deny", "from", "2001:db8::3")
		e.expect(false, "client/192.0.2.3 tcp 192.0.2.1:80 open", "client/2001:db8::3 tcp [2001:db8::1]:80 open")

		e.mustMoat("default", "reject", "incoming")
		e.expect(false, "client tcp 192.0.2.1:443 refused")
		e.mustMoat("delete", "allow", "80/tcp", "comment", "web server")
		e.expect(false, "client tcp 192.0.2.1:80 refused")

		data, _ := os.ReadFile(e.conf)
		want := "# my server\ndefault reject incoming\n\n# ssh for admins\nallow 22/tcp\n"
		if string(data) != want {
			t.Errorf("policy file:\n%s\nwant:\n%s", data, want)
		}
	})
}

func TestStatusAndCounters(t *testing.T) {
	eachBackend(t, func(t *testing.T, b string) {
		e := newEnv(t, b, false)
		if out := e.mustMoat("status"); strings.TrimSpace(out) != "Status: inactive" {
			t.Errorf("before enable: %q", out)
		}
		e.apply("default deny incoming\ndeny from 192.0.2.3\ndeny from 192.0.2.4\nallow 22/tcp comment 'ssh'\n")
		e.expect(false, "client tcp 192.0.2.1:22 open", "client tcp [2001:db8::1]:22 open", "client tcp 192.0.2.1:80 timeout",
			"client/192.0.2.3 tcp 192.0.2.1:22 timeout")
		if n := e.counter(3); n < 2 {
			t.Errorf("allow 22/tcp counted %d packets after two connections", n)
		}
		if n := e.counter(1); n < 1 {
			t.Errorf("deny from 192.0.2.3 (in a set) counted %d packets", n)
		}
		if n := e.counter(0); n < 1 {
			t.Errorf("default deny counted %d packets after a dropped probe", n)
		}
		out := e.mustMoat("status", "verbose")
		for _, want := range []string{"Status: active", "Backend: " + b, "Default: deny (incoming), allow (outgoing)", "22/tcp", "ALLOW IN", "# ssh", "Built-in rules", "established"} {
			if !strings.Contains(out, want) {
				t.Errorf("status verbose lacks %q:\n%s", want, out)
			}
		}
		e.mustMoat("disable")
		if out := e.mustMoat("status"); strings.TrimSpace(out) != "Status: inactive" {
			t.Errorf("after disable: %q", out)
		}
		e.expect(false, "client tcp 192.0.2.1:80 open", "client/192.0.2.3 tcp 192.0.2.1:22 open")
	})
}

// Switching backend removes moat's rules from the old one.
func TestSwitchBackend(t *testing.T) {
	requireBackend(t, "nftables")
	requireBackend(t, "iptables")
	t.Parallel()
	e := newEnv(t, "nftables", false)
	e.apply("default deny incoming\nallow 22/tcp\n")
	e.backend = "iptables"
	e.mustMoat("enable")
	if out := e.run("server", "nft", "list", "tables"); strings.Contains(out, "inet moat") {
		t.Errorf("nftables table left after switching to iptables:\n%s", out)
	}
	if out := e.run("server", "iptables-save", "-t", "filter"); !strings.Contains(out, "-A INPUT -m conntrack ! --ctstate RELATED,ESTABLISHED -j MOAT-INPUT\n") {
		t.Errorf("no iptables jump after switching:\n%s", out)
	}
	e.expect(false, "client tcp 192.0.2.1:22 open", "client tcp [2001:db8::1]:80 timeout")
	e.backend = "nftables"
	e.mustMoat("enable")
	if out := e.run("server", "ip6tables-save", "-t", "filter"); strings.Contains(out, "MOAT-") {
		t.Errorf("iptables chains left after switching back:\n%s", out)
	}
	e.expect(false, "client tcp 192.0.2.1:22 open", "client tcp [2001:db8::1]:80 timeout")
}

// `ip netns exec NS moat ...` manages NS, as the README says.
func TestIPNetnsExec(t *testing.T) {
	requireBackend(t, "nftables")
	t.Parallel()
	e := newEnv(t, "nftables", false)
	writeFile(t, e.conf, "allow 80/tcp\n")
	out, err := exec.CommandContext(context.Background(), "ip", "netns", "exec", e.topo.Server.Name, moatBin, "--config", e.conf, "--state-dir", e.stateDir(), "enable").CombinedOutput()
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	e.expect(false, "client tcp 192.0.2.1:80 open", "client tcp 192.0.2.1:22 timeout")
}

func TestExplain(t *testing.T) {
	t.Parallel()
	conf := filepath.Join(t.TempDir(), "moat.conf")
	writeFile(t, conf, "default deny incoming\nallow 22/tcp\nreject auth\nallow from 198.51.100.0/24 to any port 5432 proto tcp\ndeny from 2001:db8:bad::/48\ndeny from 2001:db8:bad:1::/64\nlimit 2222/tcp\ndefault deny outgoing\nallow out 53\n")
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"in", "tcp", "from", "203.0.113.5", "to", "port", "80"}, "DROP\n  decided by " + conf + ":1: default deny incoming"},
		{[]string{"in", "tcp", "from", "203.0.113.5", "to", "port", "22"}, "ACCEPT\n  decided by " + conf + ":2: allow 22/tcp"},
		{[]string{"in", "tcp", "from", "2001:db8::5", "to", "port", "113"}, "REJECT\n  decided by " + conf + ":3: reject auth"},
		{[]string{"in", "tcp", "from", "198.51.100.9", "to", "port", "5432"}, "ACCEPT\n  decided by " + conf + ":4:"},
		{[]string{"in", "tcp", "from", "203.0.113.9", "to", "port", "5432"}, "DROP"},
		{[]string{"in", "udp", "from", "2001:db8:bad:1::9", "to", "port", "22"}, "DROP\n  decided by " + conf + ":5: deny from 2001:db8:bad::/48"},
		{[]string{"in", "tcp", "from", "203.0.113.5", "to", "port", "2222"}, "rate limit"},
		{[]string{"in", "icmp", "from", "203.0.113.5"}, "DROP"},
		{[]string{"in", "icmp", "from", "203.0.113.5", "type", "3"}, "ACCEPT\n  decided by accept ICMP errors"},
		{[]string{"in", "tcp", "from", "203.0.113.5", "to", "port", "80", "state", "established"}, "ACCEPT\n  decided by accept replies of established connections"},
		{[]string{"out", "udp", "to", "2001:db8::53", "port", "53"}, "ACCEPT\n  decided by " + conf + ":9: allow out 53"},
		{[]string{"out", "tcp", "to", "192.0.2.9", "port", "25"}, "DROP\n  decided by " + conf + ":8: default deny outgoing"},
		{[]string{"route", "tcp", "in", "on", "eth1", "out", "on", "eth2", "to", "192.0.2.10", "port", "80"}, "ACCEPT\n  decided by default allow routed (built-in)"},
	} {
		out, err := moatHost(t, conf, append([]string{"explain"}, c.args...)...)
		if err != nil || !strings.Contains(out, c.want) {
			t.Errorf("explain %v: %v\n%s\nwant %q", c.args, err, out, c.want)
		}
	}
	out, err := moatHost(t, conf, "explain", "--json", "in", "tcp", "from", "203.0.113.5", "to", "port", "22")
	var ex struct {
		Verdict string `json:"verdict"`
		Origin  struct {
			Line int `json:"line"`
		} `json:"origin"`
	}
	if err != nil || json.Unmarshal([]byte(out), &ex) != nil || ex.Verdict != "ACCEPT" || ex.Origin.Line != 2 {
		t.Errorf("explain --json: %v %+v\n%s", err, ex, out)
	}
	if out, err := moatHost(t, conf, "explain", "in", "tcp", "from", "nowhere"); err == nil {
		t.Errorf("bad address accepted:\n%s", out)
	}
}

// show prints exactly what is loaded: the nft script moat runs loads as is.
func TestShowIsWhatIsLoaded(t *testing.T) {
	requireBackend(t, "nftables")
	t.Parallel()
	e := newEnv(t, "nftables", false)
	writeFile(t, e.conf, "default deny incoming\ndeny from 192.0.2.3\ndeny from 192.0.2.4\nallow 22/tcp\nlimit 2222/tcp\n")
	script := e.mustMoat("show")
	if !strings.Contains(script, "add table inet moat") || !strings.Contains(script, "add rule inet moat input tcp dport 22 counter accept") {
		t.Fatalf("show:\n%s", script)
	}
	f := filepath.Join(e.dir, "shown.nft")
	writeFile(t, f, script)
	e.run("server", "nft", "-f", f)
	e.expect(false, "client tcp 192.0.2.1:22 open", "client/192.0.2.3 tcp 192.0.2.1:22 timeout", "client tcp 192.0.2.1:80 timeout")
	ipt, err := moatHost(t, e.conf, "--backend", "iptables", "show")
	if err != nil || !strings.Contains(ipt, "-A MOAT-INPUT -p tcp --dport 22 -m comment --comment \"L4\" -j RETURN") {
		t.Errorf("show --backend iptables: %v\n%s", err, ipt)
	}
}
