package cli

import (
	"fmt"
	"strings"
	"testing"

	"github.com/moat-fw/moat/internal/policy"
	"github.com/moat-fw/moat/internal/ruleset"
)

// TestExplainOtherAnswers: a packet that leaves out its source, port or
// interface is answered for one that no rule names, and explain lists
// the other verdicts rules give when it is one they name: 'explain in tcp
// from 192.0.2.2 to port 80' said DROP while the lab's client got through
// on the server's only interface (allow in on IFACE), with no hint why.
func TestExplainOtherAnswers(t *testing.T) {
	text := `default deny incoming
allow 22/tcp
allow from 192.0.2.0/25 to any port 5432 proto tcp
deny from 192.0.2.2 to any port 443 proto tcp
allow 443/tcp
allow in on eth+ to any port 80 proto tcp
allow proto udp from any port 5353 to any port 53
allow from 2001:db8::/32 to any port 8443 proto tcp
deny out on wg0 to any port 25
`
	p, err := policy.NewDocument("moat.conf", []byte(text)).Policy(nil)
	if err != nil {
		t.Fatal(err)
	}
	rs := ruleset.Compile(p)
	for _, c := range []struct {
		packet string
		want   []string // "IF VERDICT LINE"
	}{
		{"in tcp to port 5432", []string{"from 192.0.2.0/25 ACCEPT 3"}},
		{"in tcp from 192.0.2.2 to port 80", []string{"in on eth+ ACCEPT 6"}},
		{"in tcp from 192.0.2.2 to port 80 on eth1", nil},
		{"in udp from 192.0.2.9 to port 53", []string{"from port 5353 ACCEPT 7"}},
		{"in tcp to port 443", []string{"from 192.0.2.2 DROP 4"}},
		{"in tcp to port 8443", []string{"from 2001:db8::/32 ACCEPT 8"}},
		{"in tcp from 198.51.100.1 to port 8443", nil}, // an IPv4 source stays IPv4
		{"in tcp from 192.0.2.2 to port 22", nil},
		{"out tcp to port 25", []string{"out on wg0 DROP 9"}},
	} {
		pkt, err := parsePacket(strings.Fields(c.packet))
		if err != nil {
			t.Fatal(err)
		}
		d, err := rs.Evaluate(pkt)
		if err != nil {
			t.Fatal(err)
		}
		got, more := otherAnswers(rs, p, pkt, d, "moat.conf", true)
		var gs []string
		for _, o := range got {
			line := strings.SplitN(strings.TrimPrefix(o.Decided, "moat.conf:"), ":", 2)[0]
			gs = append(gs, o.If+" "+o.Verdict+" "+line)
		}
		if strings.Join(gs, "|") != strings.Join(c.want, "|") || len(more) > 0 {
			t.Errorf("explain %s: other answers %q (more %q), want %q", c.packet, gs, more, c.want)
		}
	}

	// Many values: a few are tried, and the rest named in a note.
	var b strings.Builder
	b.WriteString("default deny incoming\n")
	for i := range 300 {
		b.WriteString(fmt.Sprintf("allow from 203.0.113.%d to any port %d proto tcp\n", i%250, 1000+i))
	}
	p, err = policy.NewDocument("moat.conf", []byte(b.String())).Policy(nil)
	if err != nil {
		t.Fatal(err)
	}
	rs = ruleset.Compile(p)
	pkt, _ := parsePacket(strings.Fields("in tcp to port 1000"))
	d, _ := rs.Evaluate(pkt)
	got, more := otherAnswers(rs, p, pkt, d, "moat.conf", true)
	if len(got) != 1 || got[0].If != "from 203.0.113.0" || len(more) != 0 {
		t.Errorf("many values: %+v, %q", got, more)
	}
	// Only the rules that may match the given port and answer otherwise
	// name values: 'allow from 172.16.0.5 to any port 1005' after a
	// thousand denied sources (which answer DROP, as the default does)
	// and allows for other ports. explain listed four denied sources,
	// the same DROP, and never tried the one allowed.
	b.Reset()
	b.WriteString("default deny incoming\n")
	for i := range 1000 {
		fmt.Fprintf(&b, "deny from 10.0.%d.%d\n", i/250, i%250+1)
	}
	for i := range 10 {
		fmt.Fprintf(&b, "allow from 172.16.0.%d to any port %d proto tcp\n", i, 1000+i)
	}
	if p, err = policy.NewDocument("moat.conf", []byte(b.String())).Policy(nil); err != nil {
		t.Fatal(err)
	}
	rs = ruleset.Compile(p)
	pkt, _ = parsePacket(strings.Fields("in tcp to port 1005"))
	d, _ = rs.Evaluate(pkt)
	got, more = otherAnswers(rs, p, pkt, d, "moat.conf", true)
	if len(got) != 1 || got[0].If != "from 172.16.0.5" || got[0].Verdict != "ACCEPT" || len(more) != 0 {
		t.Errorf("one allowed source among denied ones: %+v, %q", got, more)
	}
	// More values than are tried: a note says so.
	b.Reset()
	b.WriteString("default deny incoming\n")
	for i := range 300 {
		fmt.Fprintf(&b, "allow from 203.0.113.%d to any port 1000 proto tcp\n", i%250)
	}
	if p, err = policy.NewDocument("moat.conf", []byte(b.String())).Policy(nil); err != nil {
		t.Fatal(err)
	}
	rs = ruleset.Compile(p)
	pkt, _ = parsePacket(strings.Fields("in tcp to port 1000"))
	d, _ = rs.Evaluate(pkt)
	got, more = otherAnswers(rs, p, pkt, d, "moat.conf", true)
	if len(got) != 4 || got[3].If != "from 203.0.113.3" || len(more) != 1 || !strings.Contains(more[0], "the rules name more than 4 'from' values (the first 4 tried)") {
		t.Errorf("many values: %+v, %q", got, more)
	}
}

// TestExplainOtherAnswersApplied: the other answers name their rule as
// explain names its own (decidedBy): "the applied policy, line 3: ..."
// when moat's applied policy is evaluated, not "the applied policy:3:
// ...", which otherAnswers said (it wrote the text again, file form
// only).
func TestExplainOtherAnswersApplied(t *testing.T) {
	p, err := policy.NewDocument("moat.conf", []byte("default deny incoming\nallow 22/tcp\nallow from 192.0.2.0/25 to any port 5432 proto tcp\n")).Policy(nil)
	if err != nil {
		t.Fatal(err)
	}
	rs := ruleset.Compile(p)
	pkt, err := parsePacket(strings.Fields("in tcp to port 5432"))
	if err != nil {
		t.Fatal(err)
	}
	d, err := rs.Evaluate(pkt)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		where  string
		isFile bool
		want   string
	}{
		{"the applied policy", false, "the applied policy, line 3: allow from 192.0.2.0/25 to any port 5432 proto tcp"},
		{"/etc/moat/moat.conf", true, "/etc/moat/moat.conf:3: allow from 192.0.2.0/25 to any port 5432 proto tcp"},
	} {
		got, _ := otherAnswers(rs, p, pkt, d, c.where, c.isFile)
		if len(got) != 1 || got[0].Decided != c.want {
			t.Errorf("%s: other answers %+v, want decided_by %q", c.where, got, c.want)
		}
	}
}

// TestExplainPacketShorthand: explain reads a packet as a rule reads its
// ports: 'PORT/PROTO', service names, and 'port P' alone for the
// destination ('explain in 22/tcp', 'to port ssh' and 'tcp port 22' were
// errors).
func TestExplainPacketShorthand(t *testing.T) {
	svc := policy.ParseServices([]byte("ssh 22/tcp\ndomain 53/tcp\ndomain 53/udp\n"))
	for in, want := range map[string]string{
		"in 22/tcp":                          "tcp 0 22",
		"in ssh/tcp from 192.0.2.1":          "tcp 0 22",
		"tcp to port ssh":                    "tcp 0 22",
		"in tcp port 22":                     "tcp 0 22",
		"in udp from 192.0.2.1 port domain":  "udp 53 0",
		"in 53/udp from 192.0.2.1 port 1234": "udp 1234 53",
	} {
		p, err := parsePacketSvc(strings.Fields(in), svc)
		if err != nil {
			t.Errorf("%s: %v", in, err)
			continue
		}
		if got := fmt.Sprintf("%s %d %d", p.Proto, p.SPort, p.DPort); got != want {
			t.Errorf("%s: %s, want %s", in, got, want)
		}
	}
	for in, want := range map[string]string{
		"in 22/sctp":         "unknown protocol",
		"in tcp port nosuch": "expected 1 to 65535 or a service name",
		"in tcp port 70000":  "bad port \"70000\": expected 1 to 65535",
		// A second port of a side overwrote the first.
		"in tcp from 192.0.2.1 port 1234 port 22": "the source port is given twice (1234, then '22')",
		"in 22/tcp port 80":                       "the destination port is given twice (22, then '80')",
		"in tcp to port 22 to port 23":            "the destination port is given twice",
	} {
		if _, err := parsePacketSvc(strings.Fields(in), svc); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want %q", in, err, want)
		}
	}
}
