package drift

import (
	"strings"
	"testing"
)

// A member added by hand with a flag (nomatch: the address is taken out
// of the network that holds it, a hole in a blocklist; or a timeout, a
// comment, counters) is not what moat loaded, though its address is
// covered by the set's networks.
func TestIpsetMemberFlagsAreDrift(t *testing.T) {
	head := "Name: moat-bl4_x\nType: hash:net\nRevision: 7\nHeader: family inet hashsize 1024 maxelem 65536\nSize in memory: 1000\nReferences: 1\nNumber of entries: 2\nMembers:\n"
	want, same := newLayout(), newLayout()
	ParseIpsetList(want, "moat-bl4_x", []byte(head+"203.0.113.0/24\n192.0.2.9\n"))
	ParseIpsetList(same, "moat-bl4_x", []byte(head+"192.0.2.9\n203.0.113.0/24\n"))
	if d := Compare(want, same); len(d) != 0 {
		t.Fatalf("the same members in another order: %v", d)
	}
	for _, extra := range []string{"203.0.113.5 nomatch", "203.0.113.0/25 nomatch", "192.0.2.9 timeout 30", "203.0.113.7 comment \"x\""} {
		got := newLayout()
		ParseIpsetList(got, "moat-bl4_x", []byte(head+"203.0.113.0/24\n192.0.2.9\n"+extra+"\n"))
		d := Compare(want, got)
		if len(d) == 0 || !strings.Contains(d[0], "holds other addresses") || !strings.Contains(d[0], strings.Fields(extra)[0]) {
			t.Errorf("member %q added by hand: %v", extra, d)
		}
	}
}
