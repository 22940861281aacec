package safeapply

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// parseStatFields is parseStat as it was, with strings.Fields: the
// oracle the in-place parser is held to.
func parseStatFields(data []byte) (comm string, ppid int, flags uint64, ok bool) {
	s := string(data)
	open, end := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
	if open < 0 || end < open {
		return "", 0, 0, false
	}
	f := strings.Fields(s[end+1:])
	if len(f) < 7 {
		return "", 0, 0, false
	}
	pp, err1 := strconv.Atoi(f[1])
	fl, err2 := strconv.ParseUint(f[6], 10, 64)
	if err1 != nil || err2 != nil || pp < 0 {
		return "", 0, 0, false
	}
	return s[open+1 : end], pp, fl, true
}

// asciiTail: what follows the command name is ASCII (the kernel writes
// numbers and a state letter there); strings.Fields also splits at
// Unicode spaces, which the in-place parser does not look for.
func asciiTail(data []byte) bool {
	end := strings.LastIndexByte(string(data), ')')
	for _, c := range data[end+1:] {
		if c >= 0x80 {
			return false
		}
	}
	return true
}

// parseStat reads every process of this host as the strings.Fields
// parser did.
func TestParseStatAsFields(t *testing.T) {
	paths, _ := filepath.Glob("/proc/[0-9]*/stat")
	for _, p := range paths {
		data, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		c1, p1, f1, ok1 := parseStat(data)
		c2, p2, f2, ok2 := parseStatFields(data)
		if c1 != c2 || p1 != p2 || f1 != f2 || ok1 != ok2 || !ok1 {
			t.Errorf("%s: %q %d %#x %v; strings.Fields: %q %d %#x %v", p, c1, p1, f1, ok1, c2, p2, f2, ok2)
		}
	}
}

func FuzzParseStat(f *testing.F) {
	for _, s := range []string{"1234 (sshd) S 1 1234 1234 0 -1 4194560 100 0 0 0", "99 (evil) S 1 2 3 0 -1 0 (sshd)) S 7 1 1 0 -1 2097152 0",
		"5 (a b\nc) R 4 5 5 0 -1 0 0", "5 (x) R 4 5", "5 (x)\tR\t4 5 5\r0 -1 0 0", "5 (x) R  4   5 5 0 -1 0", ""} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		if !asciiTail(data) {
			return
		}
		c1, p1, f1, ok1 := parseStat(data)
		c2, p2, f2, ok2 := parseStatFields(data)
		if c1 != c2 || p1 != p2 || f1 != f2 || ok1 != ok2 {
			t.Errorf("%q: %q %d %#x %v; strings.Fields: %q %d %#x %v", data, c1, p1, f1, ok1, c2, p2, f2, ok2)
		}
	})
}

// Processes whose names an attacker chose to look like the fields after
// them (') R 1 2 3', a newline, parentheses, spaces), read from the
// kernel's own /proc/PID/stat: the name is theirs, the parent is the
// test, the kernel-thread flag is clear.
func TestParseStatHostileNames(t *testing.T) {
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		t.Skip("no sleep")
	}
	dir := t.TempDir()
	for _, name := range []string{") R 1 2 3 4 5 6", ") S 0 0 0 0 -1 2097152", "a\nb) R 9 9 9", "((x)) (y", " ) ", "sshd) S 1"} {
		link := filepath.Join(dir, strings.ReplaceAll(name, "/", "_"))
		if err := os.Symlink(sleep, link); err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(link, "10")
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", cmd.Process.Pid))
		if err != nil {
			t.Fatal(err)
		}
		want := name
		if len(want) > 15 { // TASK_COMM_LEN
			want = want[:15]
		}
		comm, ppid, flags, ok := parseStat(data)
		if !ok || comm != want || ppid != os.Getpid() || flags&pfKthread != 0 {
			t.Errorf("%q: comm %q, ppid %d (want %d), flags %#x, ok %v", data, comm, ppid, os.Getpid(), flags, ok)
		}
	}
}
