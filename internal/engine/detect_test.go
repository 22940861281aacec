package engine

import "testing"

// With backend auto, the backend Detect names is the one of Backends by
// that name, configured as for an explicit name: Detect returned a fresh
// backend (cli: without element records, state and key directories), so
// a first enable with backend auto wrote no element records and no chain
// cache, and loaded into another backend than the one the drift check
// and the next command read.
func TestDetectUsesTheConfiguredBackend(t *testing.T) {
	for _, name := range []string{"nftables", "iptables"} {
		t.Run(name, func(t *testing.T) {
			r := newRig(t)
			fresh := NewFake(name)
			r.eng.o.Detect = func() Backend { return fresh }
			r.write("default deny incoming\nallow 22/tcp\n")
			_, err := r.enable(r.ch(0))
			r.must(err)
			configured := r.nft
			if name == "iptables" {
				configured = r.ipt
			}
			if configured.rs == nil || fresh.rs != nil {
				t.Errorf("backend auto loaded into the detected backend, not the configured %s %v %v", name, configured.Calls, fresh.Calls)
			}
		})
	}
}
