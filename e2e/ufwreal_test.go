package e2e

import (
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// hostUFWState is a digest of the host's ufw configuration and state
// (every file's path, mode, link target and content): the tests that run
// the real ufw must leave it byte-identical.
func hostUFWState(t *testing.T) string {
	t.Helper()
	h := sha256.New()
	for _, root := range []string{"/etc/ufw", "/lib/ufw", "/etc/default/ufw"} {
		err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				if os.IsNotExist(err) {
					fmt.Fprintf(h, "%s absent\n", p)
					return nil
				}
				return err
			}
			info, err := d.Info()
			if err != nil {
				return err
			}
			fmt.Fprintf(h, "%s %v\n", p, info.Mode())
			switch {
			case info.Mode()&fs.ModeSymlink != 0:
				target, err := os.Readlink(p)
				if err != nil {
					return err
				}
				fmt.Fprintf(h, "-> %s\n", target)
			case info.Mode().IsRegular():
				data, err := os.ReadFile(p)
				if err != nil {
					return err
				}
				fmt.Fprintf(h, "%d %x\n", len(data), sha256.Sum256(data))
			}
			return nil
		})
		if err != nil {
			t.Fatalf("read the host's ufw files: %v", err)
		}
	}
	return fmt.Sprintf("%x", h.Sum(nil))
}

// Issue 7 defect 4 with the real ufw, not chains named like it: ufw is
// enabled in the server's namespace (its own copy of /etc/ufw, never the
// host's) with 'default deny incoming' and 'allow 22/tcp'; moat allows
// 80,443/tcp. ufw still drops 80 and 443 (real packets, IPv4 and IPv6),
// and moat says so: the apply warns, status (and its JSON) names ufw, and
// explain says moat accepts port 80 but ufw can still drop it.
func TestRealUFWNamed(t *testing.T) {
	t.Parallel()
	if _, err := exec.LookPath("ufw"); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("ufw is not installed (scripts/setup.sh installs it)")
		}
		t.Skip("ufw is not installed")
	}
	before := hostUFWState(t)
	// Registered first, so it runs after every other cleanup.
	t.Cleanup(func() {
		if after := hostUFWState(t); after != before {
			t.Errorf("the host's /etc/ufw, /lib/ufw or /etc/default/ufw changed during the test")
		}
	})
	for _, b := range backends {
		t.Run(b, func(t *testing.T) {
			requireBackend(t, b)
			t.Parallel()
			e := newEnv(t, b, false)
			writeFile(t, e.conf, "default deny incoming\nallow 22/tcp\n")
			e.mustMoat("enable")

			sb := newUFWSandbox(t, e.topo.Server)
			sb.ufw("default", "deny", "incoming")
			sb.ufw("allow", "22/tcp")
			sb.ufw("--force", "enable")
			if out := sb.ufw("status"); !strings.Contains(out, "Status: active") {
				t.Fatalf("ufw is not active in the test namespace:\n%s", out)
			}

			out := e.mustMoat("allow", "80,443/tcp")
			if !strings.Contains(out, "moat: warning: the lockout check judges moat's rules only; this also filters incoming packets and may drop new SSH connections: ufw: ") {
				t.Errorf("moat allow does not warn that ufw filters incoming packets too:\n%s", out)
			}

			// ufw drops what moat allows; what both allow passes.
			e.expect(false,
				"client tcp 192.0.2.1:80 timeout", "client tcp [2001:db8::1]:80 timeout",
				"client tcp 192.0.2.1:443 timeout", "client tcp [2001:db8::1]:443 timeout",
				"client tcp 192.0.2.1:22 open", "client tcp [2001:db8::1]:22 open")

			st := e.mustMoat("status")
			if !strings.Contains(st, "Other filtering also sees these packets (moat's ALLOW does not override it):") ||
				!strings.Contains(st, "  - ufw: ") {
				t.Errorf("status does not name ufw:\n%s", st)
			}
			var js struct {
				Other []struct {
					Tool  string `json:"tool"`
					Where string `json:"where"`
				} `json:"other_filtering"`
			}
			raw := e.mustMoat("status", "--json")
			if err := json.Unmarshal([]byte(raw), &js); err != nil {
				t.Fatalf("status --json: %v\n%s", err, raw)
			}
			fams := map[string]bool{}
			for _, o := range js.Other {
				if o.Tool == "ufw" {
					fams[strings.Fields(o.Where)[0]] = true
				}
				// ufw set these policies (and in both families).
				if strings.HasSuffix(o.Where, " filter chain INPUT") && o.Tool != "ufw" {
					t.Errorf("status --json does not name ufw as the owner of %s", o.Where)
				}
			}
			if !fams["iptables"] || !fams["ip6tables"] {
				t.Errorf("status --json other_filtering does not name ufw in both families: %+v", js.Other)
			}

			// Each family's packet is named with its own family's tables
			// only: ip6tables never sees an IPv4 packet.
			for src, tables := range map[string][2]string{"192.0.2.2": {"ufw: iptables filter", "ip6tables"}, "2001:db8::2": {"ufw: ip6tables filter", "iptables filter"}} {
				ex := e.mustMoat("explain", "in", "tcp", "from", src, "to", "port", "80")
				if !strings.HasPrefix(ex, "ACCEPT\n") ||
					!strings.Contains(ex, "other filtering also sees this packet and can still drop it") ||
					!strings.Contains(ex, tables[0]) {
					t.Errorf("explain of port 80 from %s does not name ufw (%s) as able to drop it:\n%s", src, tables[0], ex)
				}
				if strings.Contains(ex, tables[1]) {
					t.Errorf("explain of port 80 from %s names %s, which never sees that packet:\n%s", src, tables[1], ex)
				}
			}
		})
	}
}
