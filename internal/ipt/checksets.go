package ipt

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/moat-fw/moat/internal/procstat"
)

// A check's throwaway ipsets are named checkPrefix, the checking
// process's PID and start time (in clock ticks since boot, /proc/PID/stat)
// in base 36, then the set's key: moatchk<pid>-<start>-<key>. A check
// killed before it destroyed them left them for good (moat check takes no
// lock, and the sets' names said nothing of whether their check still
// ran). Now the next check, apply or disable destroys those of a process
// that is gone (or is another process under a reused PID), and leaves
// those of a check running at the same time.

var checkTagOnce = sync.OnceValue(func() string {
	pid := os.Getpid()
	tag := strconv.FormatInt(int64(pid), 36)
	if start, ok := procStart(pid); ok {
		tag += "-" + strconv.FormatUint(start, 36)
	}
	return tag
})

// checkSetName is the name of this process's throwaway set for key.
func checkSetName(key string) string {
	return checkPrefix + checkTagOnce() + "-" + key
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
	own := checkPrefix + checkTagOnce() + "-"
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
