package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// With iptables-nft, moat's chains are nftables chains: after moat's
// apply it records the nftables generation with the fingerprint, and a
// command that finds the generation unchanged does not read the chains
// (iptables-save) again. A rule inserted by hand into moat's chains moves
// the generation: the next command still says so and rewrites them, for
// IPv4 and IPv6. With policy sets, which ipset changes without moving the
// generation, the generation alone is not trusted: every policy has them
// now (the protected sets, matched by the ban rule), so the record says
// so and the fingerprint is read.
func TestIptablesDriftWithGeneration(t *testing.T) {
	t.Parallel()
	requireBackend(t, "iptables")
	for _, c := range []struct {
		prog, probe, rewritten string
	}{
		{"iptables", "client tcp 192.0.2.1:8080", "client tcp 192.0.2.1:6000"},
		{"ip6tables", "client tcp [2001:db8::1]:8080", "client tcp [2001:db8::1]:6000"},
	} {
		t.Run(c.prog, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, "iptables", false)
			e.apply("default deny incoming\nallow 22/tcp\nallow 80/tcp\n")
			rec := readKernelRecord(t, e)
			if !rec.HasGeneration || !rec.Sets {
				t.Fatalf("the record after the apply has no nftables generation, or does not say it covers the protected sets: %+v", rec)
			}
			e.expect(false, c.probe+" timeout")
			e.run("server", c.prog, "-I", "MOAT-INPUT", "1", "-p", "tcp", "--dport", "8080", "-j", "ACCEPT")
			e.expect(false, c.probe+" open")
			if out := e.mustMoat("status"); !strings.Contains(out, "changed outside moat") {
				t.Errorf("status after a rule was inserted by hand:\n%s", out)
			}
			out := e.mustMoat("allow", "6000/tcp")
			if !strings.Contains(out, "changed outside moat") || !strings.Contains(out, "rewrites moat's rules whole") {
				t.Errorf("an edit after a rule was inserted by hand does not say it repairs:\n%s", out)
			}
			e.expect(false, c.probe+" timeout", c.rewritten+" open")
			if rec := readKernelRecord(t, e); !rec.HasGeneration {
				t.Errorf("no generation recorded after the rewrite: %+v", rec)
			}
		})
	}
	t.Run("sets", func(t *testing.T) {
		t.Parallel()
		e := newEnv(t, "iptables", false)
		e.apply("default allow incoming\ndeny from 192.0.2.3\ndeny from 192.0.2.4\n")
		if rec := readKernelRecord(t, e); !rec.Sets {
			t.Fatalf("the record of a policy with sets does not say so: %+v", rec)
		}
	})
}

type kernelRecordFile struct {
	HasGeneration bool   `json:"has_nft_generation"`
	Sets          bool   `json:"ipsets"`
	Protected     string `json:"protected_ipsets"`
}

func readKernelRecord(t *testing.T, e *env) kernelRecordFile {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(e.stateDir(), "kernel-fingerprint.json"))
	if err != nil {
		t.Fatal(err)
	}
	var rec kernelRecordFile
	if err := json.Unmarshal(data, &rec); err != nil {
		t.Fatal(err)
	}
	return rec
}
