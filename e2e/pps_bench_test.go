package e2e

import (
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/moat-fw/moat/internal/lab"
)

// BenchmarkPacketRate sends UDP packets to the server from a raw
// AF_PACKET socket in the client namespace (built frames, no socket
// stack, so the sender is not what limits the rate) and counts them at
// the end of the server's input path (a counting table at priority 1000,
// after every filter). veth delivers in the sender's context, so the
// count per second is what the server's path costs: no firewall,
// conntrack only, moat on both backends with 0 to 100,000 blocked
// networks and 10,000 bans, and the best hand-written nftables ruleset.
// "one-flow" sends one 5-tuple (conntrack finds the entry), "new-flows" a
// new source port each packet (a new conntrack entry each).
//
//	go test -run XXX -bench PacketRate -benchtime 1x -timeout 30m ./e2e/
func BenchmarkPacketRate(b *testing.B) {
	type variant struct {
		name, setup string
		entries     int
		bans        bool
	}
	variants := []variant{{"no-firewall", "none", 0, false}, {"conntrack-only", "conntrack", 0, false}, {"hand-nft-100k", "hand", 0, false}}
	for _, backend := range backends {
		for _, n := range []int{0, 1000, 10000, 100000} {
			variants = append(variants, variant{fmt.Sprintf("moat-%s-%d", backend, n), backend, n, false})
		}
		variants = append(variants, variant{fmt.Sprintf("moat-%s-100000-bans-10k", backend), backend, 100000, true})
	}
	for _, flows := range []string{"one-flow", "new-flows"} {
		baseline, hand := 0.0, 0.0
		for _, v := range variants {
			b.Run(flows+"/"+v.name, func(b *testing.B) {
				topo, err := lab.NewTopology("moatpps", false)
				if err != nil {
					b.Fatal(err)
				}
				b.Cleanup(func() {
					if err := topo.Close(); err != nil {
						b.Error(err)
					}
				})
				ctx := context.Background()
				run := func(ns *lab.NS, stdin string, args ...string) {
					if _, err := nsRunner(ns)(ctx, []byte(stdin), args[0], args[1:]...); err != nil {
						b.Fatal(err)
					}
				}
				switch v.setup {
				case "conntrack":
					run(topo.Server, "table inet conntrack {\n\tchain in { type filter hook input priority 0; ct state new counter; }\n}\n", "nft", "-f", "-")
				case "hand":
					run(topo.Server, strings.Replace(handNft(100000), "tcp dport 22 accept", "tcp dport 22 accept\n\t\tudp dport 9 accept", 1), "nft", "-f", "-")
				case "nftables", "iptables":
					dir := b.TempDir()
					writeFile(b, filepath.Join(dir, "moat.conf"), strings.Replace(blockPolicy(v.entries), "allow 22/tcp\n", "allow 22/tcp\nallow 9/udp\n", 1))
					moatIn(b, topo.Server, dir, v.setup, "enable", "--force")
					if v.bans {
						banMany(b, topo.Server, dir, v.setup, 10000)
					}
				}
				run(topo.Server, "table inet count {\n\tchain in { type filter hook input priority 1000; udp dport 9 counter drop; }\n}\n", "nft", "-f", "-")
				// The machine is shared: the best of several short rounds.
				pps := 0.0
				for round := 0; round < 5; round++ {
					pps = max(pps, blast(b, topo, flows == "new-flows", 300*time.Millisecond))
				}
				b.ReportMetric(pps, "pps")
				switch v.name {
				case "no-firewall":
					baseline = pps
				case "hand-nft-100k":
					hand = pps
				}
				if baseline > 0 {
					b.ReportMetric(pps/baseline, "x-no-firewall")
				}
				if hand > 0 {
					b.ReportMetric(pps/hand, "x-hand-nft")
				}
			})
		}
	}
}

// banMany bans n addresses of 203.0.113.0/24's neighbourhood (never the
// client's) in moat's ban sets, in one batch.
func banMany(b *testing.B, ns *lab.NS, dir, backend string, n int) {
	b.Helper()
	var s strings.Builder
	if backend == "nftables" {
		var els []string
		for i := 0; i < n; i++ {
			els = append(els, fmt.Sprintf("100.64.%d.%d timeout 1h", i>>8, i&255))
		}
		s.WriteString("add element inet moat ban4 { " + strings.Join(els, ", ") + " }\n")
		if _, err := nsRunner(ns)(context.Background(), []byte(s.String()), "nft", "-f", "-"); err != nil {
			b.Fatal(err)
		}
		return
	}
	for i := 0; i < n; i++ {
		fmt.Fprintf(&s, "add moat-ban4 100.64.%d.%d timeout 3600 -exist\n", i>>8, i&255)
	}
	if _, err := nsRunner(ns)(context.Background(), []byte(s.String()), "ipset", "restore"); err != nil {
		b.Fatal(err)
	}
}

var countRe = regexp.MustCompile(`counter packets (\d+)`)

// blast sends frames from the client to the server's UDP port 9 for d and
// returns the packets per second counted at the end of the server's input
// path.
func blast(b *testing.B, topo *lab.Topology, newFlows bool, d time.Duration) float64 {
	b.Helper()
	var srcMAC, dstMAC net.HardwareAddr
	var ifindex int
	if err := topo.Server.Do(func() error {
		i, err := net.InterfaceByName("eth0")
		if err == nil {
			dstMAC = i.HardwareAddr
		}
		return err
	}); err != nil {
		b.Fatal(err)
	}
	before := countAtEnd(b, topo)
	var sent int
	err := topo.Client.Do(func() error {
		i, err := net.InterfaceByName("eth0")
		if err != nil {
			return err
		}
		srcMAC, ifindex = i.HardwareAddr, i.Index
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW, 0)
		if err != nil {
			return err
		}
		defer func() { _ = unix.Close(fd) }() // a send socket: nothing to flush
		addr := &unix.SockaddrLinklayer{Ifindex: ifindex, Halen: 6}
		copy(addr.Addr[:], dstMAC)
		frame := udpFrame(srcMAC, dstMAC, 40000)
		deadline := time.Now().Add(d)
		for sport := 0; ; sport++ {
			if sent%256 == 0 && time.Now().After(deadline) {
				break
			}
			if newFlows {
				setSport(frame, uint16(1024+sport%60000))
			}
			if err := unix.Sendto(fd, frame, 0, addr); err != nil {
				if err == unix.ENOBUFS || err == unix.EAGAIN {
					continue
				}
				return err
			}
			sent++
		}
		return nil
	})
	if err != nil {
		b.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond)
	got := countAtEnd(b, topo) - before
	if got < sent/2 {
		b.Logf("only %d of %d packets reached the end of the input path", got, sent)
	}
	return float64(got) / d.Seconds()
}

// countAtEnd reads the packets counted at the end of the input path.
func countAtEnd(b *testing.B, topo *lab.Topology) int {
	b.Helper()
	out, err := topo.Server.Run(context.Background(), "nft", "list", "table", "inet", "count")
	if err != nil {
		b.Fatal(err)
	}
	m := countRe.FindSubmatch(out)
	if m == nil {
		b.Fatalf("no counter:\n%s", out)
	}
	n, err := strconv.Atoi(string(m[1]))
	if err != nil {
		b.Fatal(err)
	}
	return n
}

// udpFrame is an Ethernet frame with an IPv4 UDP packet from the client
// (192.0.2.2) to the server's port 9 (192.0.2.1), 18 bytes of payload.
func udpFrame(src, dst net.HardwareAddr, sport uint16) []byte {
	f := make([]byte, 14+20+8+18)
	copy(f[0:6], dst)
	copy(f[6:12], src)
	binary.BigEndian.PutUint16(f[12:14], 0x0800)
	ip := f[14:34]
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:4], uint16(len(f)-14))
	ip[8] = 64
	ip[9] = 17
	copy(ip[12:16], []byte{192, 0, 2, 2})
	copy(ip[16:20], []byte{192, 0, 2, 1})
	binary.BigEndian.PutUint16(ip[10:12], ipChecksum(ip))
	udp := f[34:42]
	binary.BigEndian.PutUint16(udp[0:2], sport)
	binary.BigEndian.PutUint16(udp[2:4], 9)
	binary.BigEndian.PutUint16(udp[4:6], uint16(8+18))
	return f // UDP checksum 0: none, valid for IPv4
}

func setSport(f []byte, sport uint16) { binary.BigEndian.PutUint16(f[34:36], sport) }

func ipChecksum(h []byte) uint16 {
	var sum uint32
	for i := 0; i < len(h); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(h[i : i+2]))
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	return ^uint16(sum)
}
