package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Application profiles, dotted netmasks and ufw's short route form, with
// real packets on both backends.
func TestAppProfiles(t *testing.T) {
	apps := t.TempDir()
	profile := filepath.Join(apps, "test")
	write := func(ssh string) {
		writeFile(t, profile, "[OpenSSH]\ntitle=Secure shell server\nports="+ssh+"\n\n"+
			"[Web Full]\nports=80,443/tcp\n\n[DNS]\nports=53\n\n[Mixed]\nports=123/udp|5432/tcp\n")
	}
	write("22/tcp")
	// Not parallel: the moat processes the tests start read this.
	t.Setenv("MOAT_APPS_DIRS", apps)
	for _, b := range backends {
		t.Run(b, func(t *testing.T) {
			requireBackend(t, b)
			write("22/tcp")
			e := newEnv(t, b, false)
			e.apply("default deny incoming\nallow OpenSSH\nallow 'Web Full'\nallow DNS\n" +
				"allow from 192.0.2.3/255.255.255.255 to any app Mixed\n")
			e.expect(false,
				"client tcp 192.0.2.1:22 open", "client tcp [2001:db8::1]:22 open",
				"client tcp 192.0.2.1:80 open", "client tcp [2001:db8::1]:443 open",
				"client udp 192.0.2.1:53 open", "client tcp [2001:db8::1]:53 open",
				"client/192.0.2.3 udp 192.0.2.1:123 open", "client/192.0.2.3 tcp 192.0.2.1:5432 open",
				"client/192.0.2.2 udp 192.0.2.1:123 timeout", "client/192.0.2.2 tcp 192.0.2.1:5432 timeout",
				"client/2001:db8::3 tcp [2001:db8::1]:5432 timeout",
				"client tcp 192.0.2.1:2222 timeout", "client tcp 192.0.2.1:8080 timeout")
			// The rule follows the profile: after it changes, reload.
			write("2222/tcp")
			// status says why the kernel differs: the profile, not a hand change.
			if out := e.mustMoat("status"); !strings.Contains(out, "Application profiles changed since they were applied (moat reload)") ||
				strings.Contains(out, "changed outside moat") {
				t.Errorf("status after a profile changed:\n%s", out)
			}
			if ex := e.mustMoat("explain", "in", "tcp", "to", "port", "22"); !strings.HasPrefix(ex, "ACCEPT\n") || !strings.Contains(ex, "application profiles changed") {
				t.Errorf("explain after a profile changed (the kernel still opens 22):\n%s", ex)
			}
			e.mustMoat("reload")
			if out := e.mustMoat("status"); strings.Contains(out, "Application profiles changed") {
				t.Errorf("status after reload:\n%s", out)
			}
			e.expect(false, "client tcp 192.0.2.1:2222 open", "client tcp [2001:db8::1]:2222 open",
				"client tcp 192.0.2.1:22 timeout", "client tcp 192.0.2.1:80 open")
			// An unknown profile changes nothing and names close ones.
			out, err := e.moat("allow", "openssh")
			if err == nil || !strings.Contains(out, "did you mean 'OpenSSH'?") {
				t.Errorf("allow openssh: %v\n%s", err, out)
			}
		})
	}
}

func TestDottedNetmaskAndRouteShortForm(t *testing.T) {
	eachBackend(t, func(t *testing.T, b string) {
		e := newEnv(t, b, true)
		e.apply("default deny incoming\ndefault deny routed\nroute allow 80/tcp\n")
		out := e.mustMoat("allow", "from", "192.0.2.3/255.255.255.254", "to", "any", "port", "80")
		if !strings.Contains(out, "192.0.2.3/255.255.255.254 is written as the CIDR 192.0.2.2/31") {
			t.Errorf("no note about the netmask:\n%s", out)
		}
		data, err := os.ReadFile(e.conf)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(data), "allow from 192.0.2.2/31 to any port 80\n") {
			t.Errorf("policy file:\n%s", data)
		}
		e.expect(false,
			"client tcp 198.51.100.2:80 open", "client tcp [2001:db8:1::2]:80 open",
			"client tcp 198.51.100.2:443 timeout", "client udp 198.51.100.2:53 timeout",
			"client/192.0.2.3 tcp 192.0.2.1:80 open", "client/192.0.2.2 tcp 192.0.2.1:80 open",
			"client/192.0.2.4 tcp 192.0.2.1:80 timeout", "client tcp [2001:db8::1]:80 timeout")
		out, err = e.moat("allow", "from", "192.0.2.3/255.0.255.0")
		if err == nil || !strings.Contains(out, "not contiguous") {
			t.Errorf("non-contiguous mask: %v\n%s", err, out)
		}
	})
}
