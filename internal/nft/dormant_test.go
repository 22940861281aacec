package nft

import (
	"context"
	"slices"
	"strings"
	"testing"
)

// The dormant flag as the kernel reports it (google/nftables decodes it in
// the host's byte order: TableDormant turns it back), only for the tables
// asked about, and WakeTables clears it in one transaction.
func TestKernelDormantTables(t *testing.T) {
	r, ns := kernelNS(t)
	ctx := context.Background()
	script := "table ip filter {\n flags dormant\n chain INPUT { type filter hook input priority 0; }\n}\n" +
		"table ip6 filter {\n chain INPUT { type filter hook input priority 0; }\n}\n" +
		"table inet other {\n flags dormant\n}\n" +
		"table bridge br {\n}\n"
	if out, err := r.run(ctx, []byte(script), "nft", "-f", "-"); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	var got, after, all [][2]string
	err := ns.Do(func() error {
		var err error
		if all, err = ListTables(); err != nil {
			return err
		}
		if got, err = DormantTables(XtablesTables); err != nil {
			return err
		}
		if err = WakeTables(got); err != nil {
			return err
		}
		after, err = DormantTables(append(slices.Clone(XtablesTables), [2]string{"inet", "other"}))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	slices.SortFunc(all, func(a, b [2]string) int { return strings.Compare(a[0]+" "+a[1], b[0]+" "+b[1]) })
	if want := [][2]string{{"bridge", "br"}, {"inet", "other"}, {"ip", "filter"}, {"ip6", "filter"}}; !slices.Equal(all, want) {
		t.Errorf("ListTables: %v, want %v", all, want)
	}
	if !slices.Equal(got, [][2]string{{"ip", "filter"}}) {
		t.Errorf("dormant: %v, want [[ip filter]]", got)
	}
	if !slices.Equal(after, [][2]string{{"inet", "other"}}) {
		t.Errorf("after waking ip filter: %v, want [[inet other]]", after)
	}
}
