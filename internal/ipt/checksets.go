package ipt

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/moat-fw/moat/internal/procstat"
)

// A check's throwaway ipsets are named checkPrefix, "_", a tag of the
// checking process (random, made once), "-" and the set's key:
// moatchk_<tag>-<key>. While it runs, the check holds an abstract unix
// socket named after its tag (checkSocketName) in the network namespace
// of its sets, which the kernel frees when the process ends, however it
// ends. A check killed before it destroyed its sets left them for good
// (moat check takes no lock); the next check, apply or disable destroys
// those whose socket is free, and leaves those of a check running at
// the same time. Abstract sockets belong to the network namespace, as
// the ipsets do: a check in another PID namespace sharing the network
// namespace (a container with the host's network) is judged right.
// Before, the name held the check's PID and start time, judged by this
// namespace's /proc: such a check's PID named another process here or
// none, and its sets were destroyed under it (its check failed). Names
// of that older form (moatchk<pid>-<start>-<key>, and the oldest,
// moatchk<pid mod 1000000>-<key>) are still judged by PID.

var checkTag struct {
	sync.Mutex
	tag string
	// socks: the socket held in each network namespace (by the
	// namespace's file's device and inode) the process made sets in.
	socks map[[2]uint64]int
}

// checkSocketName is the abstract unix socket a check with tag holds.
func checkSocketName(tag string) string { return "@moat-check-" + tag }

// checkTagHere is this process's tag, its socket held in the calling
// thread's network namespace (where its sets are about to be made).
func checkTagHere() string {
	checkTag.Lock()
	defer checkTag.Unlock()
	if checkTag.tag == "" {
		var b [8]byte
		if _, err := rand.Read(b[:]); err != nil {
			// Never: the tag then still differs between processes.
			binary.BigEndian.PutUint64(b[:], uint64(os.Getpid())<<32|uint64(time.Now().UnixNano()&0xffffffff))
		}
		t := strconv.FormatUint(binary.BigEndian.Uint64(b[:])&(1<<41-1), 36)
		checkTag.tag = strings.Repeat("0", 8-len(t)) + t
	}
	var st unix.Stat_t
	if err := unix.Stat("/proc/thread-self/ns/net", &st); err != nil {
		return checkTag.tag
	}
	ns := [2]uint64{st.Dev, st.Ino}
	if _, ok := checkTag.socks[ns]; ok {
		return checkTag.tag
	}
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return checkTag.tag
	}
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: checkSocketName(checkTag.tag)}); err != nil {
		// Held already (a tag drawn twice: 41 random bits): its sets
		// count as live while the other holder runs.
		_ = unix.Close(fd) // never bound
		return checkTag.tag
	}
	if checkTag.socks == nil {
		checkTag.socks = map[[2]uint64]int{}
	}
	// Held until the process ends: the kernel frees it then.
	checkTag.socks[ns] = fd
	return checkTag.tag
}

// checkSetName is the name of this process's throwaway set for key.
func checkSetName(key string) string {
	return checkPrefix + "_" + checkTagHere() + "-" + key
}

// checkTagLive says whether the check with tag still runs: its socket is
// held in the calling thread's network namespace. A bind that fails for
// another reason than the name being held counts as live (nothing is
// destroyed in doubt).
func checkTagLive(tag string) bool {
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return true
	}
	defer func() { _ = unix.Close(fd) }() // a probe: bound a moment at most
	return unix.Bind(fd, &unix.SockaddrUnix{Name: checkSocketName(tag)}) != nil
}

// procStart is the start time of process pid (field 22 of
// /proc/PID/stat); ok is false when there is no such process (or it has
// ended and waits to be reaped).
func procStart(pid int) (uint64, bool) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, false
	}
	state, start, ok := procstat.Start(data)
	// A zombie has ended: nobody reaps it where init does not.
	return start, ok && state != "Z" && state != "X"
}

// checkSetLive says whether a check's throwaway set belongs to a check
// that may still run: its process is alive and started when the name
// says. A name of the older form (moatchk<pid mod 1000000>-<key>, no
// start time) counts as live while a process of that PID runs.
func checkSetLive(name string) bool {
	rest, ok := strings.CutPrefix(name, checkPrefix)
	if !ok {
		return false
	}
	if tagged, ok := strings.CutPrefix(rest, "_"); ok {
		tag, key, ok := strings.Cut(tagged, "-")
		if !ok || tag == "" || key == "" || strings.Trim(tag, "0123456789abcdefghijklmnopqrstuvwxyz") != "" {
			return false
		}
		return checkTagLive(tag)
	}
	parts := strings.Split(rest, "-")
	if len(parts) < 2 {
		return false
	}
	pid, err := strconv.ParseInt(parts[0], 36, 32)
	if err != nil || pid <= 0 {
		return false
	}
	start, alive := procStart(int(pid))
	if len(parts) == 2 {
		return alive
	}
	want, err := strconv.ParseUint(parts[1], 36, 64)
	return err == nil && alive && start == want
}

// staleCheckSets are the throwaway sets of checks no longer running
// among names.
func staleCheckSets(names map[string]bool) []string {
	var out []string
	for n := range names {
		if strings.HasPrefix(n, checkPrefix) && !checkSetLive(n) {
			out = append(out, n)
		}
	}
	slices.Sort(out)
	return out
}

// removeStaleCheckSets destroys the throwaway sets that killed checks
// left (staleCheckSets), and forgets them in sets.
func (b *Backend) removeStaleCheckSets(ctx context.Context, sets map[string]bool) error {
	stale := staleCheckSets(sets)
	if len(stale) == 0 {
		return nil
	}
	if err := b.destroySets(ctx, stale); err != nil {
		return fmt.Errorf("the throwaway ipsets of an interrupted 'moat check': %w", err)
	}
	for _, n := range stale {
		delete(sets, n)
	}
	return nil
}

// removeOwnCheckSets destroys the throwaway sets of this process that are
// there (a create refused or interrupted half way made some).
func (b *Backend) removeOwnCheckSets(ctx context.Context) error {
	names, err := b.setNames(ctx)
	if err != nil {
		return fmt.Errorf("the throwaway ipsets of this check: %w", err)
	}
	own := checkPrefix + "_" + checkTagHere() + "-"
	names = slices.DeleteFunc(names, func(n string) bool { return !strings.HasPrefix(n, own) })
	if err := b.destroySets(ctx, names); err != nil {
		return fmt.Errorf("the throwaway ipsets of this check: %w", err)
	}
	return nil
}

// destroyCheckSets destroys the throwaway sets of checks among names in
// an ipset restore of their own, with -exist (a destroy of a set that is
// not there passes), and gives the other names. A set listed a moment
// before may be gone: its check ended and destroyed it (its owner then
// gone, a command judging it after took it for a killed check's), or
// another command destroyed a killed check's first; the destroy failed
// and with it the command (a check, a disable, an apply whose rules had
// switched). No early list of moat's holds a check's set.
func (b *Backend) destroyCheckSets(ctx context.Context, names []string) ([]string, error) {
	var checks, rest []string
	for _, n := range names {
		if strings.HasPrefix(n, checkPrefix) {
			checks = append(checks, n)
		} else {
			rest = append(rest, n)
		}
	}
	if len(checks) == 0 {
		return names, nil
	}
	checks = earlyFirst(checks)
	var s strings.Builder
	for _, n := range checks {
		fmt.Fprintf(&s, "destroy %s\n", n)
	}
	if _, err := b.runIpset(ctx, []byte(s.String()), "-exist", "restore"); err != nil {
		return rest, fmt.Errorf("remove the throwaway ipsets of checks %q: %w", checks, err)
	}
	return rest, nil
}
