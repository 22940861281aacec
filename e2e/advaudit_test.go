package e2e

import (
	"os"
	"path/filepath"
	"strconv"
	"testing"
)

// TestAuditProbeSource: the source 'moat audit' judges "anyone" by is
// not one a rule or list names. A bogon blocklist holding 0.0.0.0/8 and
// ::/8 (as many do) made every open port "closed by moat", and a rule
// allowing only 0.0.0.0/8 made its port "open to anyone"; real packets
// say otherwise. Destination-restricted rules ('to ADDR') open a socket
// bound to the wildcard address for packets to ADDR.
func TestAuditProbeSource(t *testing.T) {
	eachBackend(t, func(t *testing.T, backend string) {
		e := newEnv(t, backend, false)
		bogons := filepath.Join(e.dir, "bogons.list")
		if err := os.WriteFile(bogons, []byte("0.0.0.0/8\n::/8\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		e.apply("blocklist bogons file " + bogons + "\n" + `default deny incoming
allow 22/tcp
allow 53/udp
allow from 0.0.0.0/8 to any port 443 proto tcp
allow from ::/8 to any port 443 proto tcp
allow proto tcp from any to 192.0.2.1 port 80
allow proto tcp from any to 2001:db8::1 port 80
`)
		a, code := e.audit()
		if code != 0 {
			t.Errorf("exit %d, want 0", code)
		}
		for _, f := range a.Sockets {
			want := map[string]string{"tcp 22": "open", "udp 53": "open", "tcp 80": "open", "tcp 443": "closed"}[f.Proto+" "+strconv.Itoa(int(f.Port))]
			if want != "" && f.Status != want {
				t.Errorf("%s %s/%d: %s (from %v), want %s", f.Family, f.Proto, f.Port, f.Status, f.From, want)
			}
		}
		e.checkAudit(a, nil)
	})
}
