package ipt

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// A check's throwaway sets are named after a tag of its process, whose
// abstract socket it holds while it runs: those of a process that ended
// are stale; this process's, and another live process's, are not.
// Names of the older forms are judged by PID and start time: those of a
// process that ended (or of another process under the same PID, or a
// zombie) are stale.
func TestCheckSetLive(t *testing.T) {
	mine := checkSetName("0")
	tag := checkTagHere()
	if mine != checkPrefix+"_"+tag+"-0" || len(tag) != 8 {
		t.Fatalf("this process's name %q (tag %q)", mine, tag)
	}
	if len(checkSetName(earlyKey6)) > 31 {
		t.Errorf("%q is longer than an ipset name may be", checkSetName(earlyKey6))
	}
	// Another check's socket, held and then let go.
	other, err := net.Listen("unix", checkSocketName("otherchk"))
	if err != nil {
		t.Fatal(err)
	}
	start, ok := procStart(os.Getpid())
	if !ok {
		t.Fatal("no start time for this process")
	}
	pid := strconv.FormatInt(int64(os.Getpid()), 36)
	for name, live := range map[string]bool{
		mine:                        true,
		checkSetName(earlyKey4):     true,
		checkPrefix + "_otherchk-0": true,
		checkPrefix + "_goneaway-0": false, // no socket: its check ended
		checkPrefix + "_-0":         false,
		checkPrefix + "_otherchk":   false,
		checkPrefix + "_OTHER-0":    false,
		checkPrefix + pid + "-" + strconv.FormatUint(start, 36) + "-0": true, // the older form
		checkPrefix + pid + "-0":        true,  // the oldest: the PID alone
		checkPrefix + pid + "-zz-0":     false, // the PID reused
		checkPrefix + "zzzzz-1-0":       false, // no such process
		checkPrefix + "zzzzz-early4":    false,
		checkPrefix + "-0":              false,
		checkPrefix + "junk":            false,
		"moat-input_deny_src4_3":        false,
		checkPrefix + pid + "-" + "-x-": false,
	} {
		if got := checkSetLive(name); got != live {
			t.Errorf("checkSetLive(%q) = %v, want %v", name, got, live)
		}
	}
	_ = other.Close() // the other check ends
	if checkSetLive(checkPrefix + "_otherchk-0") {
		t.Error("a check's sets still live once its socket is gone")
	}
}

// A check destroys what killed checks left before it makes its own, and
// leaves the sets of a check running meanwhile (this process's, here).
func TestCheckRemovesStaleCheckSets(t *testing.T) {
	live := checkSetName("other")
	host := &fakeHost{
		save: map[string]string{"iptables-save": "*filter\n:INPUT ACCEPT [0:0]\nCOMMIT\n", "ip6tables-save": "*filter\n:INPUT ACCEPT [0:0]\nCOMMIT\n"},
		sets: "moatchkzzzzz-1-0\nmoatchkzzzzz-1-early4\nmoatchkzzzzz-0\n" + live + "\nmoat-ban4\n",
	}
	b := &Backend{Run: host.run}
	if err := b.Check(context.Background(), goldenRuleset(t)); err != nil {
		t.Fatal(err)
	}
	var destroyed []string
	for _, c := range host.calls {
		for _, l := range strings.Split(c.stdin, "\n") {
			if n, ok := strings.CutPrefix(l, "destroy "); ok {
				destroyed = append(destroyed, n)
			}
		}
	}
	got := strings.Join(destroyed, " ")
	for _, n := range []string{"moatchkzzzzz-1-0", "moatchkzzzzz-1-early4", "moatchkzzzzz-0"} {
		if !strings.Contains(got, n) {
			t.Errorf("%s, left by a killed check, not destroyed: %s", n, got)
		}
	}
	if strings.Contains(got, live) || strings.Contains(got, "moat-ban4") {
		t.Errorf("destroyed a live check's set or moat's own: %s", got)
	}
	if strings.Index(got, "moatchkzzzzz-1-early4") > strings.Index(got, "moatchkzzzzz-1-0") {
		t.Errorf("an early list destroyed after a set it may hold: %s", got)
	}
}

// A check whose create of its throwaway sets is refused (or interrupted:
// Ctrl-C kills the ipset restore) half way destroys the sets it made
// before it returns: they were left until the next command.
func TestCheckCreateFailedRemovesItsSets(t *testing.T) {
	made := checkSetName("0")
	host := &fakeHost{save: map[string]string{"iptables-save": "*filter\n:INPUT ACCEPT [0:0]\nCOMMIT\n", "ip6tables-save": "*filter\n:INPUT ACCEPT [0:0]\nCOMMIT\n"}}
	var destroyed string
	run := func(ctx context.Context, stdin []byte, name string, args ...string) ([]byte, error) {
		if name == "ipset" && slices.Contains(args, "restore") {
			if strings.Contains(string(stdin), "create "+made) {
				host.sets = made + "\n" // the first create went through
				return nil, errors.New("ipset v7.17: Error in line 2: interrupted")
			}
			destroyed += string(stdin)
		}
		return host.run(ctx, stdin, name, args...)
	}
	b := &Backend{Run: run}
	err := b.Check(context.Background(), goldenRuleset(t))
	if err == nil || !strings.Contains(err.Error(), "create throwaway ipsets") {
		t.Fatalf("got %v", err)
	}
	if !strings.Contains(destroyed, "destroy "+made+"\n") {
		t.Errorf("the set the refused create made is not destroyed: %q", destroyed)
	}
}

// A check's throwaway sets listed by another command a moment before
// they went (their check ended and destroyed them, or another check
// destroyed a killed one's first): that command's destroy of them, its
// check's owner gone by then, failed ("The set with the given name does
// not exist"), and with it the check, the disable, or an apply whose
// rules had switched. They are destroyed tolerating their absence.
func TestCheckSetsGoneMeanwhile(t *testing.T) {
	empty := map[string]string{"iptables-save": "*filter\n:INPUT ACCEPT [0:0]\nCOMMIT\n", "ip6tables-save": "*filter\n:INPUT ACCEPT [0:0]\nCOMMIT\n"}
	for _, cmd := range []string{"check", "disable"} {
		t.Run(cmd, func(t *testing.T) {
			gone := "moatchkzzzzz-1-0"
			host := &fakeHost{save: empty, sets: gone + "\nmoatchkzzzzz-1-early4\nmoat-ban4\n"}
			run := func(ctx context.Context, stdin []byte, name string, args ...string) ([]byte, error) {
				out, err := host.run(ctx, stdin, name, args...)
				if name == "ipset" && len(args) > 0 && args[0] == "list" {
					// Listed; destroyed right after by its owner.
					host.sets = strings.ReplaceAll(host.sets, gone+"\n", "")
				}
				if name == "ipset" && !slices.Contains(args, "-exist") {
					for i, l := range strings.Split(string(stdin), "\n") {
						if n, ok := strings.CutPrefix(l, "destroy "); ok && !strings.Contains(host.sets, n+"\n") {
							return nil, fmt.Errorf("ipset v7.17: Error in line %d: The set with the given name does not exist", i+1)
						}
					}
				}
				return out, err
			}
			b := &Backend{Run: run}
			var err error
			if cmd == "check" {
				err = b.Check(context.Background(), goldenRuleset(t))
			} else {
				err = b.Remove(context.Background())
			}
			if err != nil {
				t.Fatalf("%s: %v", cmd, err)
			}
			var destroyed string
			for _, c := range host.calls {
				if c.args == "ipset -exist restore" || c.args == "ipset restore" {
					destroyed += c.stdin
				}
			}
			if !strings.Contains(destroyed, "destroy moatchkzzzzz-1-early4\n") {
				t.Errorf("the killed check's set still there is not destroyed: %q", destroyed)
			}
		})
	}
}

// procStart reads the start time of a process whose name (its
// program's file name, any user's to choose) holds spaces and
// parentheses and looks like the fields after it (a zombie's state,
// other numbers): its own start time, and alive. A name ending at the
// first ')' would read the fake fields: a live check taken for ended,
// its sets destroyed under it.
func TestProcStartHostileName(t *testing.T) {
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		t.Skip(err)
	}
	dir := t.TempDir()
	for _, name := range []string{") Z 1 2 3 4 5", "a (b) X 7 7 7", ")) 9 9 9 9 9 9", "x\n) Z 0"} {
		prog := filepath.Join(dir, name)
		if err := os.Symlink(sleep, prog); err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(prog, "30")
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		pid := cmd.Process.Pid
		data, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if !strings.Contains(string(data), "("+name) {
			t.Errorf("the process is not named %q: %q", name, data)
		}
		fields := strings.Fields(string(data[bytes.LastIndexByte(data, ')')+1:]))
		want, _ := strconv.ParseUint(fields[19], 10, 64)
		if got, ok := procStart(pid); !ok || got != want {
			t.Errorf("named %q (%q): start %d, alive %v; want %d, alive", name, data, got, ok, want)
		}
		if set := checkPrefix + strconv.FormatInt(int64(pid), 36) + "-" + strconv.FormatUint(want, 36) + "-0"; !checkSetLive(set) {
			t.Errorf("named %q: its set %s taken for a killed check's", name, set)
		}
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	}
}
