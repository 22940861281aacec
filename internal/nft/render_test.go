package nft

import (
	"flag"
	"os"
	"testing"

	"github.com/moat-fw/moat/internal/policy"
	"github.com/moat-fw/moat/internal/ruleset"
)

var update = flag.Bool("update", false, "rewrite golden files")

const goldenPolicy = `default deny incoming
default reject outgoing
deny from 203.0.113.7
deny from 203.0.113.0/28
deny from 2001:db8:bad::/48
allow 22/tcp comment 'admins'
allow 53
allow 80,443/tcp
allow 6000:6007/udp
reject auth
limit 2222/tcp
limit from 198.51.100.0/24 to any port 2200 proto tcp rate 3/10s
allow in on eth+ log to any port 8080 proto tcp
allow proto icmp from 198.51.100.0/24
allow proto ipv6-icmp from 2001:db8::/32
allow proto esp from 192.0.2.9
allow out to 2001:db8::53 port 53 proto udp
route allow in on eth1 out on eth2 to 192.0.2.0/24 port 80 proto tcp
`

func goldenRuleset(t *testing.T) *ruleset.Ruleset {
	svc := policy.ParseServices([]byte("auth 113/tcp\n"))
	p, err := policy.NewDocument("moat.conf", []byte(goldenPolicy)).Policy(svc)
	if err != nil {
		t.Fatal(err)
	}
	return ruleset.Compile(p)
}

func TestGoldenScript(t *testing.T) {
	got, err := New().Script(goldenRuleset(t))
	if err != nil {
		t.Fatal(err)
	}
	const file = "testdata/golden.nft"
	if *update {
		if err := os.WriteFile(file, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	if got != string(want) {
		t.Errorf("script differs from %s (go test -update to accept):\n%s", file, got)
	}
}

func TestParseCounters(t *testing.T) {
	data := []byte(`{"nftables": [{"metainfo": {}}, {"rule": {"family": "inet", "table": "moat", "chain": "input", "comment": "L6 admins",
	 "expr": [{"match": {}}, {"counter": {"packets": 3, "bytes": 180}}, {"accept": null}]}},
	 {"rule": {"comment": "L6 admins", "expr": [{"counter": {"packets": 1, "bytes": 60}}]}},
	 {"rule": {"comment": "default:input", "expr": [{"counter": {"packets": 7, "bytes": 420}}, {"drop": null}]}}]}`)
	c, err := parseCounters(data)
	if err != nil {
		t.Fatal(err)
	}
	if c["L6"] != (ruleset.Counter{Packets: 4, Bytes: 240}) || c["default:input"].Packets != 7 {
		t.Fatalf("%+v", c)
	}
}
