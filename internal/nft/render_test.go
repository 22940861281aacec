package nft

import (
	"flag"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/moat-fw/moat/internal/ruleset"
	"github.com/moat-fw/moat/internal/rulesettest"
)

var update = flag.Bool("update", false, "rewrite golden files")

func goldenRuleset(t *testing.T) *ruleset.Ruleset {
	return rulesettest.CompileFile(t, "testdata/golden.policy", "auth 113/tcp\n")
}

func TestGoldenScript(t *testing.T) {
	got, err := New().Script(goldenRuleset(t))
	if err != nil {
		t.Fatal(err)
	}
	const file = "testdata/golden.nft"
	rulesettest.Golden(t, file, got, *update)
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
