package nft

import (
	"flag"
	"net/netip"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/moat-fw/moat/internal/policy"
	"github.com/moat-fw/moat/internal/ruleset"
)

var update = flag.Bool("update", false, "rewrite golden files")

func goldenRuleset(t *testing.T) *ruleset.Ruleset {
	svc := policy.ParseServices([]byte("auth 113/tcp\n"))
	data, err := os.ReadFile("testdata/golden.policy")
	if err != nil {
		t.Fatal(err)
	}
	p, err := policy.NewDocument("moat.conf", data).Policy(svc)
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

func mustAddr(s string) netip.Addr { return netip.MustParseAddr(s) }

func banOf(addrs ...string) []ruleset.Ban {
	var out []ruleset.Ban
	for _, a := range addrs {
		out = append(out, ruleset.Ban{Addr: mustAddr(a), Timeout: time.Hour, Reason: "test"})
	}
	return out
}

func slicesSort(s []string) { slices.Sort(s) }
