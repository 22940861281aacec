package e2e

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/moat-fw/moat/internal/lab"
)

// sshd is a real OpenSSH server in the server namespace, with a key the
// client namespace logs in with.
type sshd struct {
	e    *env
	dir  string
	port uint16
	key  string
}

func requireSSH(t testing.TB) {
	t.Helper()
	for _, p := range []string{"/usr/sbin/sshd", "ssh", "ssh-keygen"} {
		if _, err := exec.LookPath(p); err != nil {
			t.Fatalf("%s is not installed (openssh-server, openssh-client)", p)
		}
	}
}

// newSSHDDir makes the directory name under the env's for an sshd on
// port: a host key ("host"), the client's key ("client") and
// authorized_keys holding it.
func (e *env) newSSHDDir(name string, port uint16) *sshd {
	e.t.Helper()
	requireSSH(e.t)
	dir := filepath.Join(e.dir, name)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		e.t.Fatal(err)
	}
	if err := os.MkdirAll("/run/sshd", 0o755); err != nil { // privilege separation directory
		e.t.Fatal(err)
	}
	s := &sshd{e: e, dir: dir, port: port, key: filepath.Join(dir, "client")}
	for _, k := range []string{"host", "client"} {
		if out, err := exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", filepath.Join(dir, k)).CombinedOutput(); err != nil {
			e.t.Fatalf("ssh-keygen: %v\n%s", err, out)
		}
	}
	pub, err := os.ReadFile(s.key + ".pub")
	if err != nil {
		e.t.Fatal(err)
	}
	writeFile(e.t, filepath.Join(dir, "authorized_keys"), string(pub))
	return s
}

// startSSHD starts sshd on port in the server namespace; it is killed when
// the test ends.
func (e *env) startSSHD(port uint16) *sshd {
	e.t.Helper()
	return e.startSSHDWith(port, "", "")
}

// startSSHDWith adds config lines and, with logFile, writes sshd's log
// there (sshd -E) for the guard to follow.
func (e *env) startSSHDWith(port uint16, extra, logFile string) *sshd {
	e.t.Helper()
	s := e.newSSHDDir(fmt.Sprintf("sshd%d", port), port)
	dir := s.dir
	// sshd keeps the first value of a keyword: extra lines go first.
	conf := extra + fmt.Sprintf("Port %d\nListenAddress 0.0.0.0\nListenAddress ::\n", port) + sshdCommon(dir)
	writeFile(e.t, filepath.Join(dir, "sshd_config"), conf)
	args := []string{"-D", "-e", "-f", filepath.Join(dir, "sshd_config")}
	if logFile != "" {
		args = append(args, "-E", logFile)
	}
	cmd := exec.Command("/usr/sbin/sshd", args...)
	// No pipes (sshd's children would hold them open after it is killed),
	// and a process group, so the cleanup ends the per-connection children
	// too.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := e.topo.Server.Start(cmd); err != nil {
		e.t.Fatalf("start sshd: %v", err)
	}
	e.t.Cleanup(func() {
		// sshd's per-connection children leave its process group
		// (setsid): end them too, or one that outlives the test (a client
		// banned mid-connection) writes the log into a removed directory.
		killDescendants(cmd.Process.Pid)
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) // gone already if it died
		_ = cmd.Wait()
	})
	// See runSSHD: a loaded machine takes seconds to start sshd.
	deadline := time.Now().Add(20 * time.Second)
	for {
		out, _ := e.topo.Client.Send(context.Background(), lab.Probe{Proto: "tcp", Dst: netip.AddrPortFrom(lab.ServerV4, port)})
		if out == lab.Open {
			return s
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("sshd does not answer on port %d", port)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// loggedSSHD starts sshd on port 22 with the extra config lines, logging
// to sshd.log in the test's folder for the guard to follow.
func (e *env) loggedSSHD(extra string) (*sshd, string) {
	e.t.Helper()
	logFile := filepath.Join(e.dir, "sshd.log")
	return e.startSSHDWith(22, extra, logFile), logFile
}

func (s *sshd) sshArgs(addr netip.Addr, command ...string) []string {
	return append([]string{"-i", s.key, "-p", fmt.Sprint(s.port), "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
		"-o", "BatchMode=yes", "-o", "ConnectTimeout=20", "-o", "LogLevel=ERROR", "root@" + addr.String()}, command...)
}

// sshWorks runs ssh in ns and reports
// whether it exited 0. ssh gives up when the TCP connection or sshd's
// greeting takes longer than ConnectTimeout. The first try allows 2s, so a
// firewall that drops the SYN gets a quick verdict. If the connection was
// made but sshd was slower than that to greet (it execs itself for each
// connection, which takes seconds on a loaded machine), the firewall let
// it through: the second try allows 20s, so only the firewall decides
// whether the login works, never the machine's load.
func sshWorks(t testing.TB, ns *lab.NS, args []string) bool {
	t.Helper()
	try := func(timeout string) (string, bool) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		// ssh keeps the first value of an option: this one overrides
		// any in args.
		out, err := ns.Run(ctx, "ssh", append([]string{"-o", "ConnectTimeout=" + timeout}, args...)...)
		return string(out), err == nil
	}
	out, ok := try("2")
	if !ok && strings.Contains(out, "during banner exchange") {
		t.Logf("ssh %v: sshd slow to greet, trying again: %s", args, out)
		_, ok = try("20")
	}
	return ok
}

// session is a live SSH login from the client namespace running cat, so
// the test can tell whether it still carries data.
type session struct {
	cmd *exec.Cmd
	in  io.WriteCloser
	out *bufio.Reader
	n   int
}

func (s *sshd) login(addr netip.Addr) *session {
	s.e.t.Helper()
	return s.loginWith(addr)
}

// loginBoth logs in to the server's IPv4 and IPv6 addresses (from the
// client's 192.0.2.2 and 2001:db8::2).
func (s *sshd) loginBoth() (v4, v6 *session) {
	s.e.t.Helper()
	return s.login(lab.ServerV4), s.login(lab.ServerV6)
}

// startSession starts cmd (a login that runs cat; what names it in an
// error) in ns with pipes to its input and output.
func startSession(t testing.TB, ns *lab.NS, cmd *exec.Cmd, what string) *session {
	t.Helper()
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	outPipe, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := ns.Start(cmd); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	return &session{cmd: cmd, in: in, out: bufio.NewReader(outPipe)}
}

// loginWith is login with more ssh options (before the destination), such
// as forwarded ports.
func (s *sshd) loginWith(addr netip.Addr, opts ...string) *session {
	t := s.e.t
	t.Helper()
	cmd := exec.Command("ssh", append(opts, s.sshArgs(addr, "cat")...)...)
	sess := startSession(t, s.e.topo.Client, cmd, "ssh")
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }) // may be gone already
	// A login on a loaded machine takes seconds (key exchange, sshd
	// execs itself, then the session's shell runs cat); a login that
	// cannot work never answers, however long the wait.
	if err := sess.alive(20 * time.Second); err != nil {
		t.Fatalf("ssh login to %s: %v", addr, err)
	}
	return sess
}

// alive sends a line through the session and waits for it to come back.
func (s *session) alive(wait time.Duration) error {
	s.n++
	want := fmt.Sprintf("ping %d\n", s.n)
	if _, err := io.WriteString(s.in, want); err != nil {
		return err
	}
	got := make(chan string, 1)
	go func() {
		line, _ := s.out.ReadString('\n')
		got <- line
	}()
	select {
	case line := <-got:
		if line != want {
			return fmt.Errorf("session answered %q", line)
		}
		return nil
	case <-time.After(wait):
		return fmt.Errorf("session silent for %s", wait)
	}
}

func (s *session) kill() {
	_ = s.cmd.Process.Signal(syscall.SIGKILL) // may be gone already
	_ = s.cmd.Wait()
}

// canLogin opens a new SSH connection and runs true.
func (s *sshd) canLogin(addr netip.Addr) bool {
	s.e.t.Helper()
	return sshWorks(s.e.t, s.e.topo.Client, s.sshArgs(addr, "true"))
}

// chainCounters are the policy counters of built-in chains in
// iptables-save output, which traffic changes.
var chainCounters = regexp.MustCompile(` \[\d+:\d+\]$`)

// kernelState is moat's and everyone's rules, without counters.
func (e *env) kernelState() string {
	e.t.Helper()
	if e.backend == "nftables" {
		return e.run("server", "nft", "-s", "list", "ruleset")
	}
	var b strings.Builder
	for _, prog := range []string{"iptables-save", "ip6tables-save"} {
		for _, line := range strings.Split(e.run("server", prog), "\n") {
			if !strings.HasPrefix(line, "#") {
				b.WriteString(chainCounters.ReplaceAllString(line, "") + "\n")
			}
		}
	}
	// ipset picks a random hash seed (initval) for each set it creates.
	sets := regexp.MustCompile(` initval 0x[0-9a-f]+`).ReplaceAllString(e.run("server", "ipset", "save"), "")
	lines := strings.Split(sets, "\n")
	sort.Strings(lines)
	b.WriteString(strings.Join(lines, "\n"))
	return b.String()
}

// killDescendants kills every process below pid (found by parent PID in
// /proc), deepest first.
func killDescendants(pid int) {
	dirs, err := os.ReadDir("/proc")
	if err != nil {
		return
	}
	children := map[int][]int{}
	for _, d := range dirs {
		var p int
		if _, err := fmt.Sscan(d.Name(), &p); err != nil {
			continue
		}
		data, err := os.ReadFile(filepath.Join("/proc", d.Name(), "stat"))
		if err != nil {
			continue
		}
		// "PID (comm) STATE PPID ...": comm may hold spaces and parens.
		i := strings.LastIndexByte(string(data), ')')
		if i < 0 {
			continue
		}
		var state string
		var ppid int
		if _, err := fmt.Sscan(string(data[i+1:]), &state, &ppid); err == nil {
			children[ppid] = append(children[ppid], p)
		}
	}
	var walk func(int)
	walk = func(p int) {
		for _, c := range children[p] {
			walk(c)
			_ = syscall.Kill(c, syscall.SIGKILL) // may have exited meanwhile
		}
	}
	walk(pid)
}

// assertAlive fails the test for each session that no longer carries
// data ("WHAT cut: ...").
func assertAlive(t testing.TB, what string, sessions ...*session) {
	t.Helper()
	for _, s := range sessions {
		if err := s.alive(3 * time.Second); err != nil {
			t.Errorf("%s cut: %v", what, err)
		}
	}
}
