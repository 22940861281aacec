// Package safeapply keeps moat from locking the admin out: it finds the
// live SSH sessions, checks a new ruleset against them, arms a rollback
// that survives the caller, and makes the policy persist across reboots.
package safeapply

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

// Session is a live SSH connection: Client is the admin's end.
type Session struct {
	Client netip.AddrPort `json:"client"`
	Server netip.AddrPort `json:"server"`
	Source string         `json:"source"` // how it was found
}

func (s Session) String() string {
	return fmt.Sprintf("%s → %s (%s)", s.Client, s.Server, s.Source)
}

// SSHState is what moat knows of sshd in its network namespace.
type SSHState struct {
	Listen   []netip.AddrPort // sshd's listening sockets
	Sessions []Session
}

// Ports returns the distinct ports sshd listens on, sorted.
func (s SSHState) Ports() []uint16 {
	seen := map[uint16]bool{}
	var ports []uint16
	for _, l := range s.Listen {
		if !seen[l.Port()] {
			seen[l.Port()] = true
			ports = append(ports, l.Port())
		}
	}
	sort.Slice(ports, func(i, j int) bool { return ports[i] < ports[j] })
	return ports
}

// tcpEntry is one line of /proc/net/tcp or tcp6.
type tcpEntry struct {
	local, remote netip.AddrPort
	state         string // "0A" listen, "01" established
	inode         string
}

// FindSSH reads sshd's listening ports and established sessions from
// procRoot ("/proc"), and adds the SSH_CONNECTION of this process (sshConn
// is its value, empty if none). Only sockets of the network namespace moat
// runs in are seen: /proc/net is this process's namespace.
func FindSSH(procRoot, sshConn string) (SSHState, error) {
	var st SSHState
	entries, err := readTCP(procRoot)
	if err != nil {
		return st, err
	}
	inodes, err := sshdSocketInodes(procRoot)
	if err != nil {
		return st, err
	}
	for _, e := range entries {
		if e.state == "0A" && inodes[e.inode] {
			st.Listen = append(st.Listen, e.local)
		}
	}
	seen := map[string]bool{}
	for _, e := range entries {
		if e.state != "01" {
			continue
		}
		for _, l := range st.Listen {
			if e.local.Port() == l.Port() && listensOn(l.Addr(), e.local.Addr()) {
				s := Session{Client: e.remote, Server: e.local, Source: "established connection to sshd"}
				if !seen[s.Client.String()+s.Server.String()] {
					seen[s.Client.String()+s.Server.String()] = true
					st.Sessions = append(st.Sessions, s)
				}
				break
			}
		}
	}
	// SSH_CONNECTION counts only if that connection exists here: the
	// variable is inherited across `ip netns exec` and sudo, and may name a
	// session of another namespace. It finds sessions of an SSH server moat
	// does not recognise by name (dropbear, a renamed sshd).
	if s, ok := parseSSHConnection(sshConn); ok && !seen[s.Client.String()+s.Server.String()] {
		for _, e := range entries {
			if e.state == "01" && e.local == s.Server && e.remote == s.Client {
				st.Sessions = append(st.Sessions, s)
				break
			}
		}
	}
	return st, nil
}

// listensOn reports whether a socket listening on l accepts connections
// to a: its own address, 0.0.0.0 for IPv4, :: for both (dual-stack).
func listensOn(l, a netip.Addr) bool {
	switch {
	case l == a:
		return true
	case l == netip.IPv6Unspecified():
		return true
	case l == netip.IPv4Unspecified():
		return a.Is4()
	}
	return false
}

// parseSSHConnection reads "CLIENT_IP CLIENT_PORT SERVER_IP SERVER_PORT".
func parseSSHConnection(v string) (Session, bool) {
	f := strings.Fields(v)
	if len(f) != 4 {
		return Session{}, false
	}
	ca, err1 := netip.ParseAddr(f[0])
	cp, err2 := strconv.ParseUint(f[1], 10, 16)
	sa, err3 := netip.ParseAddr(f[2])
	sp, err4 := strconv.ParseUint(f[3], 10, 16)
	if err1 != nil || err2 != nil || err3 != nil || err4 != nil {
		return Session{}, false
	}
	return Session{Client: netip.AddrPortFrom(ca.Unmap().WithZone(""), uint16(cp)),
		Server: netip.AddrPortFrom(sa.Unmap().WithZone(""), uint16(sp)), Source: "SSH_CONNECTION of this shell"}, true
}

func readTCP(procRoot string) ([]tcpEntry, error) {
	var out []tcpEntry
	for _, name := range []string{"net/tcp", "net/tcp6"} {
		data, err := os.ReadFile(filepath.Join(procRoot, name))
		if os.IsNotExist(err) {
			continue // no IPv6 in this kernel
		}
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", name, err)
		}
		sc := bufio.NewScanner(bytes.NewReader(data))
		sc.Buffer(make([]byte, 64<<10), 64<<10)
		first := true
		for sc.Scan() {
			if first {
				first = false
				continue
			}
			f := strings.Fields(sc.Text())
			if len(f) < 10 {
				continue
			}
			local, err1 := parseProcAddr(f[1])
			remote, err2 := parseProcAddr(f[2])
			if err1 != nil || err2 != nil {
				continue
			}
			out = append(out, tcpEntry{local: local, remote: remote, state: f[3], inode: f[9]})
		}
	}
	return out, nil
}

// parseProcAddr reads "0100007F:0016": the address as 32-bit words in host
// byte order, the port in hex.
func parseProcAddr(s string) (netip.AddrPort, error) {
	addrHex, portHex, ok := strings.Cut(s, ":")
	if !ok {
		return netip.AddrPort{}, fmt.Errorf("bad address %q", s)
	}
	raw, err := hex.DecodeString(addrHex)
	if err != nil || (len(raw) != 4 && len(raw) != 16) {
		return netip.AddrPort{}, fmt.Errorf("bad address %q", s)
	}
	port, err := strconv.ParseUint(portHex, 16, 16)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("bad port %q", s)
	}
	b := make([]byte, len(raw))
	for i := 0; i < len(raw); i += 4 {
		binary.BigEndian.PutUint32(b[i:], binary.NativeEndian.Uint32(raw[i:]))
	}
	addr, _ := netip.AddrFromSlice(b)
	return netip.AddrPortFrom(addr.Unmap(), uint16(port)), nil
}

// sshdSocketInodes returns the socket inodes held by sshd processes
// (OpenSSH's daemon, and its per-session sshd-session processes).
func sshdSocketInodes(procRoot string) (map[string]bool, error) {
	dirs, err := os.ReadDir(procRoot)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", procRoot, err)
	}
	inodes := map[string]bool{}
	for _, d := range dirs {
		if _, err := strconv.Atoi(d.Name()); err != nil {
			continue
		}
		comm, err := os.ReadFile(filepath.Join(procRoot, d.Name(), "comm"))
		if err != nil {
			continue // the process has gone
		}
		name := strings.TrimSpace(string(comm))
		if name != "sshd" && !strings.HasPrefix(name, "sshd-") {
			continue
		}
		fdDir := filepath.Join(procRoot, d.Name(), "fd")
		fds, err := os.ReadDir(fdDir)
		if err != nil {
			continue
		}
		for _, fd := range fds {
			target, err := os.Readlink(filepath.Join(fdDir, fd.Name()))
			if err != nil {
				continue
			}
			if inode, ok := strings.CutPrefix(target, "socket:["); ok {
				inodes[strings.TrimSuffix(inode, "]")] = true
			}
		}
	}
	return inodes, nil
}
