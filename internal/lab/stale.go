package lab

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// netnsDir is where named namespaces live (`ip netns`, netns.NewNamed).
const netnsDir = "/run/netns"

// A namespace NewNS makes carries its maker in its loopback's alias
// (IFLA_IFALIAS, kept by the namespace itself): the PID namespace, the
// PID and the start time of the process that made it. RemoveStale removes
// only a namespace of that mark whose maker is gone: a name alone is no
// proof (an admin's `ip netns add moat-web-300-1`), a PID alone neither
// (a run in another PID namespace sharing /run/netns, a PID reused).

// ownerMarkPrefix starts the mark.
const ownerMarkPrefix = "moat-lab owner "

// owner is the process that made a namespace.
type owner struct {
	pidNS uint64 // inode of its PID namespace
	pid   int
	start uint64 // its start time, in clock ticks after boot (/proc/PID/stat)
}

func (o owner) mark() string {
	return fmt.Sprintf("%spidns=%d pid=%d start=%d", ownerMarkPrefix, o.pidNS, o.pid, o.start)
}

// parseOwnerMark reads a mark of owner.mark.
func parseOwnerMark(s string) (owner, bool) {
	rest, ok := strings.CutPrefix(s, ownerMarkPrefix)
	if !ok {
		return owner{}, false
	}
	var o owner
	if n, err := fmt.Sscanf(rest, "pidns=%d pid=%d start=%d", &o.pidNS, &o.pid, &o.start); err != nil || n != 3 || o.pid <= 0 {
		return owner{}, false
	}
	if o.mark() != s { // nothing more, nothing written otherwise
		return owner{}, false
	}
	return o, true
}

// selfOwner is this process as the maker of a namespace, by its PID as
// /proc names it (where RemoveStale looks for it): in a PID namespace
// whose /proc is its parent's, getpid() names another process there, and
// the mark then matches no name UniqueName made (never removed).
func selfOwner() (owner, error) {
	l, err := os.Readlink("/proc/self")
	if err != nil {
		return owner{}, fmt.Errorf("read this process's ID in /proc: %w", err)
	}
	pid, err := strconv.Atoi(l)
	if err != nil {
		return owner{}, fmt.Errorf("read this process's ID in /proc: %q", l)
	}
	return processOwner(pid)
}

// processOwner reads process pid's PID namespace (this process's: /proc
// shows those of its PID namespace and below) and start time.
func processOwner(pid int) (owner, error) {
	var st unix.Stat_t
	if err := unix.Stat("/proc/self/ns/pid", &st); err != nil {
		return owner{}, fmt.Errorf("read the PID namespace: %w", err)
	}
	start, err := startTime(pid)
	if err != nil {
		return owner{}, err
	}
	return owner{pidNS: st.Ino, pid: pid, start: start}, nil
}

// startTime reads field 22 of /proc/PID/stat (after the command's name,
// which may hold spaces and parentheses: read after the last ')').
func startTime(pid int) (uint64, error) {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return 0, err
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: no command name", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	// Fields 3 onwards: the start time is field 22, index 19 here.
	if len(f) < 20 {
		return 0, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f)+2)
	}
	return strconv.ParseUint(f[19], 10, 64)
}

// markOwner writes o's mark into ns (its loopback's alias).
func markOwner(ns *NS, o owner) error {
	h, err := handleIn(ns)
	if err != nil {
		return err
	}
	defer h.Close()
	l, err := h.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("find lo in %s: %w", ns.Name, err)
	}
	if err := h.LinkSetAlias(l, o.mark()); err != nil {
		return fmt.Errorf("mark namespace %s as made by this run: %w", ns.Name, err)
	}
	return nil
}

// RemoveStale deletes the namespaces made by this package (NewNS: its
// mark) under a name of UniqueName (PREFIX-PID-N) starting with prefix,
// whose maker is gone: those a run killed before its cleanup (kill -9 of
// a test or a benchmark, a timeout) left behind, which stay until deleted
// by hand. A namespace of a live process (this one's, another run's, one
// whose mark names another PID namespace), one without the mark, and any
// entry of /run/netns that is not a network namespace mounted there (a
// symbolic link: never followed), is left alone. It returns the names
// removed.
func RemoveStale(prefix string) ([]string, error) {
	if prefix == "" || strings.ContainsAny(prefix, "/\x00") {
		return nil, fmt.Errorf("bad namespace prefix %q", prefix)
	}
	entries, err := os.ReadDir(netnsDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	self, err := selfOwner()
	if err != nil {
		return nil, err
	}
	var removed []string
	var errs []error
	for _, e := range entries {
		name := e.Name()
		pid, ok := ownerPID(name, prefix)
		if !ok {
			continue
		}
		path := filepath.Join(netnsDir, name)
		o, ok := markedOwner(path)
		if !ok || o.pid != pid || o.pidNS != self.pidNS || ownerAlive(o) {
			continue
		}
		// MNT_DETACH: a process left inside keeps the namespace; the name
		// goes. UMOUNT_NOFOLLOW: the path itself, never where a link
		// put there since points to.
		if err := unix.Unmount(path, unix.MNT_DETACH|unix.UMOUNT_NOFOLLOW); err != nil {
			if !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) { // another run's removal came first
				errs = append(errs, fmt.Errorf("delete stale namespace %s: %w", name, err))
			}
			continue
		}
		if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("delete stale namespace %s: %w", name, err))
			continue
		}
		removed = append(removed, name)
	}
	return removed, errors.Join(errs...)
}

// markedOwner reads the maker's mark of the namespace mounted at path: ok
// only for a network namespace (nsfs, not a link) holding one.
func markedOwner(path string) (owner, bool) {
	fi, err := os.Lstat(path)
	if err != nil || !fi.Mode().IsRegular() {
		return owner{}, false
	}
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0)
	if err != nil {
		return owner{}, false
	}
	h := netns.NsHandle(fd)
	defer func() { _ = h.Close() }() // read only
	var fs unix.Statfs_t
	if err := unix.Fstatfs(fd, &fs); err != nil || fs.Type != unix.NSFS_MAGIC {
		return owner{}, false
	}
	// NewHandleAt enters it as a network namespace (setns with
	// CLONE_NEWNET): another kind fails.
	nh, err := netlink.NewHandleAt(h)
	if err != nil {
		return owner{}, false
	}
	defer nh.Close()
	l, err := nh.LinkByName("lo")
	if err != nil {
		return owner{}, false
	}
	return parseOwnerMark(l.Attrs().Alias)
}

// ownerAlive says whether o still runs: a process of its PID started at
// its start time. In doubt, alive.
func ownerAlive(o owner) bool {
	start, err := startTime(o.pid)
	if errors.Is(err, os.ErrNotExist) || errors.Is(err, syscall.ESRCH) {
		return false // gone
	}
	if err != nil {
		return true
	}
	return start == o.start // else its PID was taken again
}

// ownerPID reads the PID of a name UniqueName made from a prefix that
// starts with prefix: PREFIX-PID-N, PID and N decimal.
func ownerPID(name, prefix string) (int, bool) {
	if !strings.HasPrefix(name, prefix) {
		return 0, false
	}
	f := strings.Split(name, "-")
	if len(f) < 3 {
		return 0, false
	}
	if _, err := strconv.ParseUint(f[len(f)-1], 10, 63); err != nil {
		return 0, false
	}
	pid, err := strconv.Atoi(f[len(f)-2])
	if err != nil || pid <= 0 || strconv.Itoa(pid) != f[len(f)-2] {
		return 0, false
	}
	// The prefix itself ends before the PID (UniqueName's prefix).
	if len(strings.Join(f[:len(f)-2], "-")) < len(prefix) {
		return 0, false
	}
	return pid, true
}
