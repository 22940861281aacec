package safeapply

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

func writeConf(t *testing.T, path, text string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
}

// The files are read as sshd reads them when sshd cannot be asked.
func TestParseSSHDConfig(t *testing.T) {
	for _, c := range []struct {
		name  string
		files map[string]string // relative to a temp dir; "main" is the config
		want  string
	}{
		{"empty", map[string]string{"main": ""}, "[22]"},
		{"ports, case, comments", map[string]string{"main": "Port 2222\n#Port 23\nport 2200\n"}, "[2200 2222]"},
		{"ListenAddress with and without port", map[string]string{"main": "ListenAddress 192.0.2.1:2022\nListenAddress [2001:db8::1]:2023\nListenAddress 0.0.0.0\n"}, "[22 2022 2023]"},
		{"only ListenAddress with port: Port unused", map[string]string{"main": "Port 2222\nListenAddress 192.0.2.1:2022\n"}, "[2022]"},
		{"Include glob, relative to /etc/ssh-like dir", map[string]string{
			"main":                 "Include sshd_config.d/*.conf\nPort 22\n",
			"sshd_config.d/a.conf": "Port 2222\n",
			"sshd_config.d/b.conf": "Port=2223 # trailing\n",
			"sshd_config.d/c.txt":  "Port 9999\n",
		}, "[22 2222 2223]"},
		{"nested Include, absolute", map[string]string{
			"main":     "Include @/one.conf\n",
			"one.conf": "Include @/two.conf\n",
			"two.conf": "Port 2022\n",
		}, "[2022]"},
		{"Match blocks ignored", map[string]string{"main": "Port 2222\nMatch User bob\n  Port 9999\n  Include @/m.conf\n", "m.conf": "Port 9998\n"}, "[2222]"},
		{"missing Include is no error", map[string]string{"main": "Include @/none/*.conf\nPort 2200\n"}, "[2200]"},
		{"tab and equals", map[string]string{"main": "Port\t2201\nListenAddress = 198.51.100.1\n"}, "[2201]"},
		{"host name ListenAddress", map[string]string{"main": "ListenAddress ssh.example.org:2299\n"}, "[2299]"},
		{"bad values ignored", map[string]string{"main": "Port 70000\nPort 0\nPort x\nPort 2244\n"}, "[2244]"},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			for name, text := range c.files {
				if name == "main" {
					name = "sshd_config"
				}
				writeConf(t, filepath.Join(dir, name), strings.ReplaceAll(text, "@", dir))
			}
			l, err := parseSSHDConfig(filepath.Join(dir, "sshd_config"), dir)
			if err != nil {
				t.Fatal(err)
			}
			if got := fmt.Sprint(l.Ports()); got != c.want {
				t.Errorf("ports %s, want %s (%v)", got, c.want, l.Addrs)
			}
		})
	}
	// A missing file is sshd's default; an Include loop is an error, but
	// the ports read so far still count.
	dir := t.TempDir()
	if l, err := parseSSHDConfig(filepath.Join(dir, "none"), dir); err != nil || fmt.Sprint(l.Ports()) != "[22]" {
		t.Errorf("missing: %v %v", l.Ports(), err)
	}
	loop := filepath.Join(dir, "loop")
	writeConf(t, loop, "Port 2020\nInclude "+loop+"\n")
	l, err := parseSSHDConfig(loop, dir)
	if err == nil || !strings.Contains(err.Error(), "nested") || !strings.Contains(fmt.Sprint(l.Ports()), "2020") {
		t.Errorf("loop: %v %v", l.Ports(), err)
	}
}

// With sshd installed, its own parser (sshd -T) decides, Include and all.
func TestReadSSHDConfigWithSSHD(t *testing.T) {
	for _, p := range []string{"/usr/sbin/sshd", "ssh-keygen"} {
		if _, err := exec.LookPath(p); err != nil {
			t.Fatalf("%s is not installed (openssh-server)", p)
		}
	}
	dir := t.TempDir()
	if out, err := exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", filepath.Join(dir, "host")).CombinedOutput(); err != nil {
		t.Fatalf("ssh-keygen: %v\n%s", err, out)
	}
	conf := filepath.Join(dir, "sshd_config")
	writeConf(t, conf, "Include "+dir+"/sshd_config.d/*.conf\nHostKey "+dir+"/host\nListenAddress 192.0.2.1\nListenAddress [2001:db8::1]:2200\n")
	writeConf(t, filepath.Join(dir, "sshd_config.d/port.conf"), "Port 2222\nPort 22\n")
	l, err := ReadSSHDConfig(context.Background(), conf)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(l.Source, "sshd -T") {
		t.Errorf("not read by sshd -T: %s", l.Source)
	}
	if got := fmt.Sprint(l.Addrs); got != "[192.0.2.1:2222 192.0.2.1:22 [2001:db8::1]:2200]" {
		t.Errorf("addresses %s", got)
	}
	// A configuration sshd refuses (no host key it can load) is parsed.
	bad := filepath.Join(dir, "bad_config")
	writeConf(t, bad, "Include "+dir+"/sshd_config.d/*.conf\nHostKey "+dir+"/missing\nNoSuchKeyword yes\n")
	l, err = ReadSSHDConfig(context.Background(), bad)
	if err != nil || strings.HasPrefix(l.Source, "sshd -T") || fmt.Sprint(l.Ports()) != "[22 2222]" {
		t.Errorf("fallback: %v %s %v", l.Ports(), l.Source, err)
	}
}

// SSHDPorts joins what sshd listens on now and what its configuration says.
func TestSSHDPorts(t *testing.T) {
	dir := t.TempDir()
	conf := filepath.Join(dir, "sshd_config")
	writeConf(t, conf, "Port 2200\n")
	ports, from := SSHDPorts(context.Background(), fakeProc(t), conf)
	if fmt.Sprint(ports) != "[2200 2222]" || !strings.Contains(from, "sshd listens on 2222") {
		t.Errorf("ports %v from %s", ports, from)
	}
	if p := FailClosedPolicy(filepath.Join(dir, "missing")); !strings.Contains(p, "allow 22/tcp") || !strings.Contains(p, "default deny incoming") {
		t.Errorf("fail-closed policy:\n%s", p)
	}
}

// No configuration line makes the reader panic, and what it takes as a
// port is one.
func FuzzSSHDConfigLine(f *testing.F) {
	for _, s := range []string{"Port 22", "port=2222", "ListenAddress [2001:db8::1]:2200", "ListenAddress fe80::1%eth0",
		"ListenAddress host.example:22 rdomain x", "Include \"a b\" c", "Match User x", "ListenAddress [::1", "ListenAddress :", "\tPort\t\"22\" # c"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, line string) {
		key, args := sshdLine(line)
		if key == "listenaddress" && len(args) > 0 {
			aps, ok := parseListenAddress(args[0], 0)
			for _, ap := range aps {
				if !ok || !ap.Addr().IsValid() || ap.Addr().Zone() != "" {
					t.Fatalf("%q: %v", line, aps)
				}
			}
		}
		dir := t.TempDir()
		conf := filepath.Join(dir, "sshd_config")
		if err := os.WriteFile(conf, []byte(line+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		l, _ := parseSSHDConfig(conf, dir)
		for _, p := range l.Ports() {
			if p == 0 {
				t.Fatalf("%q: port 0", line)
			}
		}
	})
}

// A configuration too big or including itself still gives the ports read.
func TestParseSSHDConfigHostile(t *testing.T) {
	dir := t.TempDir()
	big := filepath.Join(dir, "big")
	writeConf(t, big, "Port 2202\n"+strings.Repeat("# x\n", sshdMaxFileSize/4+1))
	main := filepath.Join(dir, "sshd_config")
	writeConf(t, main, "Port 2201\nInclude "+big+"\nInclude "+dir+"/many/*\n")
	for i := range 20 {
		writeConf(t, filepath.Join(dir, "many", fmt.Sprint(i)), "Include "+dir+"/many/*\n")
	}
	l, err := parseSSHDConfig(main, dir)
	if err == nil || !strings.Contains(fmt.Sprint(l.Ports()), "2201") {
		t.Errorf("ports %v err %v", l.Ports(), err)
	}
	writeConf(t, main, "Port 2201\nInclude "+dir+"/many/*\n")
	l, err = parseSSHDConfig(main, dir)
	if err == nil || !strings.Contains(err.Error(), "more than") || !strings.Contains(fmt.Sprint(l.Ports()), "2201") {
		t.Errorf("ports %v err %v", l.Ports(), err)
	}
}

// A FIFO among the Included files is refused at once: opened blocking, it
// hung the fail-closed restore at boot for good.
func TestParseSSHDConfigFIFO(t *testing.T) {
	dir := t.TempDir()
	if err := syscall.Mkfifo(filepath.Join(dir, "fifo.conf"), 0o600); err != nil {
		t.Fatal(err)
	}
	main := filepath.Join(dir, "sshd_config")
	writeConf(t, main, "Port 2201\nInclude "+dir+"/*.conf\n")
	done := make(chan error, 1)
	var l SSHDListen
	go func() {
		var err error
		l, err = parseSSHDConfig(main, dir)
		done <- err
	}()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "not a regular file") || !strings.Contains(fmt.Sprint(l.Ports()), "2201") {
			t.Errorf("ports %v err %v", l.Ports(), err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("parseSSHDConfig hangs on a FIFO")
	}
}
