package lab

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"text/tabwriter"
	"time"
)

// Check is a probe with the outcome the policy predicts.
type Check struct {
	Name   string
	From   *NS
	Probe  Probe
	Expect Outcome
}

// Result is a check with what was observed.
type Result struct {
	Check
	Observed Outcome
	Err      error
}

// OK reports whether the observation matches the prediction.
func (r Result) OK() bool { return r.Err == nil && r.Observed == r.Expect }

// UDPRetryWait is how long a UDP probe expected to be answered waits
// the second time, after its first wait ran out.
const UDPRetryWait = 2 * time.Second

// RunChecks sends all probes at once (each waits for its own answer) and
// returns the results in order.
func RunChecks(ctx context.Context, checks []Check) []Result {
	res := make([]Result, len(checks))
	var wg sync.WaitGroup
	for i, c := range checks {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out, err := c.From.Send(ctx, c.Probe)
			if err == nil && out == Timeout && c.Expect == Open && c.Probe.Proto == "udp" && c.Probe.Wait < UDPRetryWait {
				// A UDP answer needs the echo server's process to run
				// (a TCP connect and an ICMP echo are answered by the
				// kernel): on a loaded machine it may miss DropWait.
				// Asked once more with time to answer; a dropped packet
				// stays a timeout.
				p := c.Probe
				p.Wait = UDPRetryWait
				out, err = c.From.Send(ctx, p)
			}
			res[i] = Result{Check: c, Observed: out, Err: err}
		}()
	}
	wg.Wait()
	return res
}

// DemoPolicy is the classic hardening guide's policy.
const DemoPolicy = `# The classic iptables hardening guide, as a moat policy:
default deny incoming    # INPUT policy DROP
default allow outgoing
allow 22/tcp             # SSH stays reachable
`

// Demo builds a client and a server namespace, starts listeners, applies
// DemoPolicy in the server with the moat binary at moatPath, probes with
// real packets and prints a table and `moat status verbose`. It reports
// whether every observation matched the policy.
func Demo(ctx context.Context, moatPath, backend string, out io.Writer) (_ bool, err error) {
	topo, err := NewTopology("moatlab", false)
	if err != nil {
		return false, err
	}
	defer func() { err = errors.Join(err, topo.Close()) }()
	var svc Services
	defer func() { err = errors.Join(err, svc.Close()) }()
	if err := svc.ServeAll(ctx, topo.Server, []uint16{22, 80}, []uint16{53}); err != nil {
		return false, err
	}
	if err := svc.ServeAll(ctx, topo.Client, []uint16{80}, []uint16{53}); err != nil {
		return false, err
	}
	dir, err := os.MkdirTemp("", "moat-lab-")
	if err != nil {
		return false, err
	}
	defer func() { err = errors.Join(err, os.RemoveAll(dir)) }()
	conf := filepath.Join(dir, "moat.conf")
	if err := os.WriteFile(conf, []byte(DemoPolicy), 0o644); err != nil {
		return false, err
	}
	fmt.Fprintf(out, "Lab: client %s (%s, %s) ── server %s (%s, %s)\n", topo.Client.Name, ClientV4, ClientV6, topo.Server.Name, ServerV4, ServerV6)
	fmt.Fprintf(out, "Policy applied in the server:\n%s\n", DemoPolicy)
	args := []string{"--config", conf, "--state-dir", filepath.Join(dir, "state")}
	if backend != "" {
		args = append(args, "--backend", backend)
	}
	if msg, err := topo.Server.Run(ctx, moatPath, append(args, "enable")...); err != nil {
		return false, fmt.Errorf("%w\n%s", err, msg)
	}

	var checks []Check
	for _, fam := range []struct {
		name           string
		server, client netip.Addr
	}{{"IPv4", ServerV4, ClientV4}, {"IPv6", ServerV6, ClientV6}} {
		checks = append(checks,
			Check{fam.name + " ping client→server", topo.Client, Probe{Proto: "icmp", Dst: netip.AddrPortFrom(fam.server, 0)}, Timeout},
			Check{fam.name + " ssh client→server tcp/22", topo.Client, Probe{Proto: "tcp", Dst: netip.AddrPortFrom(fam.server, 22)}, Open},
			Check{fam.name + " http client→server tcp/80", topo.Client, Probe{Proto: "tcp", Dst: netip.AddrPortFrom(fam.server, 80)}, Timeout},
			Check{fam.name + " dns client→server udp/53", topo.Client, Probe{Proto: "udp", Dst: netip.AddrPortFrom(fam.server, 53)}, Timeout},
			Check{fam.name + " http server→client, reply (established)", topo.Server, Probe{Proto: "tcp", Dst: netip.AddrPortFrom(fam.client, 80)}, Open},
			Check{fam.name + " dns server→client, reply (established)", topo.Server, Probe{Proto: "udp", Dst: netip.AddrPortFrom(fam.client, 53)}, Open},
			Check{fam.name + " ping server→client, reply (established)", topo.Server, Probe{Proto: "icmp", Dst: netip.AddrPortFrom(fam.client, 0)}, Open},
		)
	}
	results := RunChecks(ctx, checks)
	ok := PrintResults(out, results)
	status, err := topo.Server.Run(ctx, moatPath, append(args, "status", "verbose")...)
	fmt.Fprintf(out, "\n$ moat status verbose   (in %s)\n%s", topo.Server.Name, status)
	if err != nil {
		return false, err
	}
	if ctx.Err() != nil {
		return false, ctx.Err()
	}
	return ok, nil
}

// PrintResults prints a table of results and reports whether all passed.
func PrintResults(out io.Writer, results []Result) bool {
	ok := true
	tw := tabwriter.NewWriter(out, 2, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "\nPROBE\tEXPECTED\tOBSERVED\t")
	for _, r := range results {
		mark := "ok"
		obs := string(r.Observed)
		if r.Err != nil {
			obs = "error: " + r.Err.Error()
		}
		if !r.OK() {
			mark = "MISMATCH"
			ok = false
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", r.Name, r.Expect, obs, mark)
	}
	if err := tw.Flush(); err != nil {
		return false // the table did not reach the reader: nothing is proven
	}
	return ok
}
