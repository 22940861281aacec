package safeapply

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/moat-fw/moat/internal/boundedfile"
)

// DefaultSSHDConfig is sshd's main configuration file.
const DefaultSSHDConfig = "/etc/ssh/sshd_config"

// sshdDir is where sshd resolves a relative Include (OpenSSH's SSHDIR).
const sshdDir = "/etc/ssh"

// sshdIncludeDepth is OpenSSH's limit on nested Include (SERVCONF_MAX_DEPTH).
const sshdIncludeDepth = 16

// sshdMaxFiles bounds the files one configuration may pull in.
const sshdMaxFiles = 1024

// sshdMaxFileSize bounds one configuration file.
const sshdMaxFileSize = 4 << 20

// SSHDListen is where sshd's configuration says it listens.
type SSHDListen struct {
	// Addrs are the listening sockets; an unspecified address (0.0.0.0,
	// ::) is every address of its family. A ListenAddress given as a host
	// name is kept as its port on both unspecified addresses.
	Addrs []netip.AddrPort
	// Source says how it was read: "sshd -T" or the files parsed.
	Source string
}

// Ports returns the distinct ports, sorted.
func (l SSHDListen) Ports() []uint16 {
	return SSHState{Listen: l.Addrs}.Ports()
}

// ReadSSHDConfig returns where sshd listens according to its effective
// configuration: the output of `sshd -T -f path` when sshd is installed
// and can load it (it needs its host keys), else the files themselves,
// following Include as sshd does (globs, relative to /etc/ssh, nested up to
// 16 deep) and reading Port and ListenAddress outside Match blocks. A
// missing file means sshd's defaults (port 22 on every address). With an
// error, what could be read is returned too.
func ReadSSHDConfig(ctx context.Context, path string) (SSHDListen, error) {
	if l, err := sshdT(ctx, path); err == nil {
		return l, nil
	}
	return parseSSHDConfig(path, sshdDir)
}

// sshdT runs sshd's own parser: `sshd -T` prints the effective
// configuration, with every ListenAddress and its port resolved.
func sshdT(ctx context.Context, path string) (SSHDListen, error) {
	bin := ""
	for _, p := range []string{"/usr/sbin/sshd", "/usr/local/sbin/sshd", "/sbin/sshd"} {
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() {
			bin = p
			break
		}
	}
	if bin == "" {
		return SSHDListen{}, errors.New("sshd is not installed")
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "-T", "-f", path)
	var stdout bytes.Buffer
	cmd.Stdout = &stdout
	if err := cmd.Run(); err != nil {
		return SSHDListen{}, fmt.Errorf("%s -T -f %s: %w", bin, path, err)
	}
	var l SSHDListen
	var ports []uint16
	sc := bufio.NewScanner(&stdout)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		key, val, _ := strings.Cut(strings.TrimSpace(sc.Text()), " ")
		switch key {
		case "port":
			if p, err := strconv.ParseUint(val, 10, 16); err == nil && p > 0 {
				ports = append(ports, uint16(p))
			}
		case "listenaddress":
			// "0.0.0.0:22", "[::]:22", "[fe80::1%eth0]:22", possibly
			// followed by " rdomain NAME".
			val, _, _ = strings.Cut(val, " ")
			if ap, ok := parseListenAddress(val, 0); ok {
				l.Addrs = append(l.Addrs, ap...)
			}
		}
	}
	if len(l.Addrs) == 0 {
		if len(ports) == 0 {
			return SSHDListen{}, fmt.Errorf("%s -T printed no port", bin)
		}
		l.Addrs = anyAddrs(ports)
	}
	l.Source = "sshd -T -f " + path
	return l, nil
}

// parseSSHDConfig reads Port and ListenAddress the way sshd does, without
// sshd. dir resolves relative Include patterns.
func parseSSHDConfig(path, dir string) (SSHDListen, error) {
	p := &sshdParser{dir: dir}
	err := p.file(path, 0)
	if err != nil && len(p.read) == 0 {
		if errors.Is(err, os.ErrNotExist) {
			return SSHDListen{Addrs: anyAddrs([]uint16{22}), Source: path + " (missing: sshd's default)"}, nil
		}
		return SSHDListen{}, err
	}
	ports := p.ports
	if len(ports) == 0 {
		ports = []uint16{22}
	}
	var l SSHDListen
	for _, la := range p.listen {
		if la.Port() != 0 {
			l.Addrs = append(l.Addrs, la)
			continue
		}
		for _, port := range ports {
			l.Addrs = append(l.Addrs, netip.AddrPortFrom(la.Addr(), port))
		}
	}
	if len(p.listen) == 0 {
		l.Addrs = anyAddrs(ports)
	}
	l.Source = strings.Join(p.read, ", ")
	// A half-read configuration still names ports: the caller decides.
	return l, err
}

type sshdParser struct {
	dir    string
	files  int
	read   []string
	ports  []uint16
	listen []netip.AddrPort // port 0: every Port
}

func (p *sshdParser) file(path string, depth int) error {
	if depth > sshdIncludeDepth {
		return fmt.Errorf("%s: Include nested more than %d deep", path, sshdIncludeDepth)
	}
	if p.files++; p.files > sshdMaxFiles {
		return fmt.Errorf("%s: more than %d files included", path, sshdMaxFiles)
	}
	// Without blocking: a FIFO among the Included files must not hang
	// the fail-closed restore at boot.
	f, st, err := boundedfile.Open(path)
	if errors.Is(err, boundedfile.ErrNotRegular) {
		return fmt.Errorf("read sshd config %s: not a regular file", path)
	}
	if err != nil {
		return fmt.Errorf("read sshd config: %w", err)
	}
	defer func() { _ = f.Close() }() // read only
	data, err := boundedfile.ReadAll(f, st.Size(), sshdMaxFileSize)
	if errors.As(err, new(*boundedfile.TooLargeError)) {
		return fmt.Errorf("read sshd config %s: larger than %d bytes", path, sshdMaxFileSize)
	}
	if err != nil {
		return fmt.Errorf("read sshd config %s: %w", path, err)
	}
	p.read = append(p.read, path)
	inMatch := false
	for n, line := range strings.Split(string(data), "\n") {
		key, args := sshdLine(line)
		if key == "" {
			continue
		}
		switch key {
		case "match":
			// Port and ListenAddress are not allowed in a Match block, and
			// a Match block lasts to the end of its file.
			inMatch = true
		case "include":
			if inMatch {
				continue
			}
			for _, pat := range args {
				if !filepath.IsAbs(pat) && !strings.HasPrefix(pat, "~") {
					pat = filepath.Join(p.dir, pat)
				}
				matches, err := filepath.Glob(pat)
				if err != nil {
					return fmt.Errorf("%s:%d: bad Include pattern %q: %w", path, n+1, pat, err)
				}
				sort.Strings(matches) // as glob(3) returns them
				for _, m := range matches {
					if err := p.file(m, depth+1); err != nil {
						return err
					}
				}
			}
		case "port":
			if inMatch || len(args) == 0 {
				continue
			}
			if v, err := strconv.ParseUint(args[0], 10, 16); err == nil && v > 0 {
				p.ports = append(p.ports, uint16(v))
			}
		case "listenaddress":
			if inMatch || len(args) == 0 {
				continue
			}
			if aps, ok := parseListenAddress(args[0], 0); ok {
				p.listen = append(p.listen, aps...)
			}
		}
	}
	return nil
}

// sshdLine splits a configuration line into its lower-case keyword and
// arguments ("Keyword value", "Keyword=value", quotes).
func sshdLine(line string) (string, []string) {
	line = strings.TrimSpace(line)
	if line == "" || line[0] == '#' {
		return "", nil
	}
	key, rest := line, ""
	if i := strings.IndexAny(line, " \t="); i >= 0 {
		key, rest = line[:i], strings.TrimLeft(line[i:], " \t")
		rest = strings.TrimPrefix(rest, "=")
	}
	var args []string
	for _, f := range strings.Fields(rest) {
		if strings.HasPrefix(f, "#") {
			break
		}
		args = append(args, strings.Trim(f, `"`))
	}
	return strings.ToLower(key), args
}

// parseListenAddress reads "ADDR", "ADDR:PORT", "[ADDR]:PORT" or a host
// name (with or without ":PORT"). A host name cannot be resolved at boot:
// it stands for both unspecified addresses. Port 0 means "every Port".
func parseListenAddress(s string, def uint16) ([]netip.AddrPort, bool) {
	if a, err := netip.ParseAddr(s); err == nil {
		return []netip.AddrPort{netip.AddrPortFrom(a.WithZone("").Unmap(), def)}, true
	}
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return []netip.AddrPort{netip.AddrPortFrom(ap.Addr().WithZone("").Unmap(), ap.Port())}, true
	}
	host, portText := s, ""
	if i := strings.LastIndexByte(s, ':'); i >= 0 {
		host, portText = s[:i], s[i+1:]
	}
	port := def
	if portText != "" {
		v, err := strconv.ParseUint(portText, 10, 16)
		if err != nil || v == 0 {
			return nil, false
		}
		port = uint16(v)
	}
	host = strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
	if host == "" {
		return nil, false
	}
	if a, err := netip.ParseAddr(host); err == nil {
		return []netip.AddrPort{netip.AddrPortFrom(a.WithZone("").Unmap(), port)}, true
	}
	return []netip.AddrPort{netip.AddrPortFrom(netip.IPv4Unspecified(), port), netip.AddrPortFrom(netip.IPv6Unspecified(), port)}, true
}

func anyAddrs(ports []uint16) []netip.AddrPort {
	var out []netip.AddrPort
	for _, p := range ports {
		out = append(out, netip.AddrPortFrom(netip.IPv4Unspecified(), p), netip.AddrPortFrom(netip.IPv6Unspecified(), p))
	}
	return out
}

// SSHDConfigPorts returns the ports to keep open for SSH when moat must
// fail closed (at boot, before sshd runs, or with sshd running): the ports
// sshd listens on now in this network namespace (its own listening sockets
// and, when it is socket-activated, systemd's), plus the ports of sshd's
// effective configuration at path (ReadSSHDConfig). 22 if nothing says
// otherwise. It never fails: a half-read configuration still gives ports.
func SSHDConfigPorts(path string) []uint16 {
	ports, _ := SSHDPorts(context.Background(), "/proc", path)
	return ports
}

// SSHDPorts is SSHDConfigPorts, saying where the ports come from.
func SSHDPorts(ctx context.Context, procRoot, path string) ([]uint16, string) {
	seen := map[uint16]bool{}
	var from []string
	if st, err := FindSSH(procRoot, ""); err == nil && len(st.Listen) > 0 {
		for _, p := range st.Ports() {
			seen[p] = true
		}
		from = append(from, "sshd listens on "+portList(st.Ports()))
	}
	l, err := ReadSSHDConfig(ctx, path)
	if len(l.Addrs) > 0 {
		for _, p := range l.Ports() {
			seen[p] = true
		}
		from = append(from, "the configuration ("+l.Source+") names "+portList(l.Ports()))
	}
	if err != nil {
		from = append(from, fmt.Sprintf("cannot read all of sshd's configuration: %v", err))
	}
	if len(seen) == 0 {
		seen[22] = true
		from = append(from, "22 by default")
	}
	var out []uint16
	for p := range seen {
		out = append(out, p)
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out, strings.Join(from, "; ")
}

func portList(ports []uint16) string {
	var s []string
	for _, p := range ports {
		s = append(s, strconv.Itoa(int(p)))
	}
	return strings.Join(s, ", ")
}
