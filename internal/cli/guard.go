package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/moat-fw/moat/internal/engine"
	"github.com/moat-fw/moat/internal/guard"
	"github.com/moat-fw/moat/internal/policy"
	"github.com/moat-fw/moat/internal/termtext"
)

const guardLong = `Follow sshd's log and ban addresses that fail to log in too often, in
kernel sets with timeouts: bans expire even if moat is down, survive
'moat apply', and are put back after a restart.

Settings live in the policy file:
  guard sshd                          # turn the guard on ('moat init' writes it)
  guard maxretry 5 findtime 10m       # 5 failures within 10 minutes...
  guard bantime 1h bantime-max 1w     # ...ban for 1h, repeat offenders longer,
  guard bantime-factor 2              # ×2 each time, at most a week
  guard weak 0.5                      # pre-auth disconnects, bad banners count half
  allowlist 198.51.100.0/24 2001:db8:1::/48   # never banned

Each sshd connection is judged whole: rejected keys an agent offers before
the right one count only if the connection ends without a login, and then
once; password failures count each. The server's own addresses, loopback,
logged-in SSH sessions and the allowlist are never banned ('moat guard
check FILE' shows the judgement of every line, and why).

The log is journald (through 'journalctl -f -o json', resuming from a saved
cursor) or a file (--log-file; found by itself when there is no journal),
followed across rotation by rename and by truncation. Runs in the
foreground as a systemd Type=notify service (packaging/systemd/
moat-guard.service) or on its own. SIGHUP ('systemctl reload moat-guard')
re-reads the settings after the policy was edited; with 'guard sshd off'
the guard stops (exit 0; bans already made run out).`

func (a *app) guardCommand() *cobra.Command {
	var logFile, journalctl, metrics string
	cmd := &cobra.Command{
		Use: "guard",
		Example: `  moat guard                                 # follow the journal (what moat-guard.service runs)
  moat guard --log-file /var/log/auth.log
  moat guard check /var/log/auth.log`,
		Short:   "Stop SSH brute force: follow sshd's log, ban offenders in the kernel",
		Long:    guardLong,
		GroupID: "guard",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.runGuard(cmd.Context(), logFile, journalctl, metrics)
		},
	}
	cmd.Flags().StringVar(&logFile, "log-file", "", "follow this file (/var/log/auth.log) instead of journald")
	cmd.Flags().StringVar(&journalctl, "journalctl", "journalctl", "the journalctl program")
	cmd.Flags().Lookup("journalctl").Hidden = true
	cmd.Flags().StringVar(&metrics, "metrics-listen", "", "serve Prometheus metrics on this address (127.0.0.1:9550; runs "+MetricsProgram+")")
	cmd.AddCommand(a.guardCheckCommand())
	return cmd
}

// pickSource: --log-file, else journald when it runs, else the usual files.
func pickSource(logFile, journalctl string, st *guard.State) (guard.Source, string, error) {
	if logFile != "" {
		return &guard.FileSource{Path: logFile, From: filePos(st, logFile)}, "file " + logFile, nil
	}
	if _, err := exec.LookPath(journalctl); err == nil {
		if _, err := os.Stat("/run/systemd/journal/socket"); err == nil || journalctl != "journalctl" {
			return &guard.JournalSource{Journalctl: journalctl, Cursor: st.JournalCursor}, "journald", nil
		}
	}
	for _, f := range []string{"/var/log/auth.log", "/var/log/secure", "/var/log/messages"} {
		if _, err := os.Stat(f); err == nil {
			return &guard.FileSource{Path: f, From: filePos(st, f)}, "file " + f, nil
		}
	}
	return nil, "", errors.New("no log to follow: no journald and no /var/log/auth.log; use --log-file")
}

func filePos(st *guard.State, path string) *guard.FilePos {
	if st.File != nil && st.File.Path == path {
		return st.File
	}
	return nil
}

// GuardMetrics makes the guard's metrics and the function that serves
// them on an address. It is set by moat-guard-metrics
// (cmd/moat-guard-metrics), which links Prometheus' client; in moat it is
// nil, and `moat guard --metrics-listen` runs that program in its place.
var GuardMetrics func() (*guard.Metrics, func(ctx context.Context, addr string) error)

// MetricsProgram is the program that serves the guard's metrics, looked
// for beside the moat executable, then in LibDir.
const MetricsProgram = "moat-guard-metrics"

// LibDir is where the package installs moat's helper programs.
const LibDir = "/usr/lib/moat"

// metricsProgram finds MetricsProgram beside the moat executable or in
// LibDir (findMetricsProgram) and opens it.
func metricsProgram() (string, *os.File, error) {
	var dirs []string
	if self, err := os.Executable(); err == nil {
		dirs = append(dirs, filepath.Dir(self))
	}
	return findMetricsProgram(append(dirs, LibDir))
}

// findMetricsProgram is metricsProgram looking in dirs, in order. It
// takes the first MetricsProgram that is an executable regular file (not
// a symbolic link) owned by root (or by whoever runs moat) and writable by
// nobody else, in a directory whose every ancestor is owned so and
// writable by nobody else (or sticky, as /tmp: nobody else can rename what
// root owns there). It returns the file opened: the checks are made on
// the open file, and the caller runs that file (/proc/self/fd), so a file
// put at the name after the check is never run.
func findMetricsProgram(dirs []string) (string, *os.File, error) {
	var why []string
	for _, d := range dirs {
		path := filepath.Join(d, MetricsProgram)
		f, err := openTrusted(path)
		if err != nil {
			why = append(why, err.Error())
			continue
		}
		return path, f, nil
	}
	return "", nil, fmt.Errorf("--metrics-listen: the guard's metrics are served by %s, which is not usable here (%s); reinstall moat's package, or build it beside moat: go build -o %s ./cmd/%s",
		MetricsProgram, strings.Join(why, "; "), filepath.Join(dirs[0], MetricsProgram), MetricsProgram)
}

// openTrusted opens path (O_PATH, never through a symbolic link at its
// last component) when only root or whoever runs moat can change it or
// what its name leads to (findMetricsProgram).
func openTrusted(path string) (*os.File, error) {
	dir, err := filepath.EvalSymlinks(filepath.Dir(path))
	if err != nil {
		return nil, fmt.Errorf("%s: %v", path, errors.Unwrap(err))
	}
	for d := dir; ; d = filepath.Dir(d) {
		if err := trustedDir(d); err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		if d == filepath.Dir(d) {
			break
		}
	}
	fd, err := unix.Open(filepath.Join(dir, filepath.Base(path)), unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("%s: %v", path, err)
	}
	f := os.NewFile(uintptr(fd), path)
	fi, err := f.Stat()
	if err != nil {
		_ = f.Close()
		return nil, fmt.Errorf("%s: %v", path, err)
	}
	switch {
	case fi.Mode()&os.ModeSymlink != 0:
		err = errors.New("a symbolic link (not followed: put the program itself there)")
	case !fi.Mode().IsRegular() || fi.Mode().Perm()&0o111 == 0:
		err = errors.New("not an executable file")
	case fi.Mode().Perm()&0o022 != 0:
		err = errors.New("writable by group or others")
	case !ownedByUs(fi):
		err = errors.New("owned by another user")
	default:
		return f, nil
	}
	_ = f.Close()
	return nil, fmt.Errorf("%s: %w", path, err)
}

// trustedDir says why others could change what dir holds: it is not a
// directory owned by root (or whoever runs moat), or others may write it
// without the sticky bit.
func trustedDir(dir string) error {
	fi, err := os.Lstat(dir)
	switch {
	case err != nil:
		return err
	case !fi.IsDir():
		return fmt.Errorf("%s: not a directory", dir)
	case !ownedByUs(fi):
		return fmt.Errorf("directory %s owned by another user", dir)
	case fi.Mode().Perm()&0o022 != 0 && fi.Mode()&os.ModeSticky == 0:
		return fmt.Errorf("directory %s writable by group or others", dir)
	}
	return nil
}

// ownedByUs says whether fi is owned by root or by whoever runs moat.
func ownedByUs(fi os.FileInfo) bool {
	st, ok := fi.Sys().(*syscall.Stat_t)
	return ok && (st.Uid == 0 || int(st.Uid) == os.Geteuid())
}

// execMetricsGuard replaces this process with MetricsProgram and the same
// arguments: the guard then runs there, with its metrics, under the same
// PID (systemd's MAINPID, sd_notify and the watchdog see no change). The
// file run is the one checked, through its open descriptor.
func (a *app) execMetricsGuard() error {
	path, f, err := metricsProgram()
	if err != nil {
		return err
	}
	defer func() { _ = f.Close() }() // only reached when the exec failed
	argv := append([]string{path}, a.args...)
	fdPath := fmt.Sprintf("/proc/self/fd/%d", f.Fd())
	env := append(os.Environ(), metricsExecEnv+"="+path)
	if err := syscall.Exec(fdPath, argv, env); err != nil {
		return fmt.Errorf("--metrics-listen: run %s: %w", path, err)
	}
	return nil // not reached
}

// metricsExecEnv names, in the environment of the program
// execMetricsGuard runs, the file it ran: a moat without the metrics that
// finds it set was run in MetricsProgram's place (a copy of moat
// installed under that name), and refuses instead of running itself again
// for ever.
const metricsExecEnv = "MOAT_GUARD_METRICS_RAN"

func (a *app) runGuard(ctx context.Context, logFile, journalctl, metricsAddr string) error {
	if metricsAddr != "" && GuardMetrics == nil {
		if ran := os.Getenv(metricsExecEnv); ran != "" {
			return fmt.Errorf("--metrics-listen: %s ran moat again, not the guard with its metrics: it is not %s (reinstall moat's package, or build it: go build -o %s ./cmd/%s)",
				termtext.Printable(ran), MetricsProgram, termtext.Printable(ran), MetricsProgram)
		}
		return a.execMetricsGuard()
	}
	p, err := a.loadPolicy()
	if err != nil {
		return err
	}
	if !p.Guard.Enabled {
		return fmt.Errorf("the guard is off in %s: add 'guard sshd'", a.config)
	}
	b, err := a.banBackend(ctx)
	if err != nil {
		return err
	}
	reload := make(chan policy.Guard)
	// moat's rules may move to the other backend while the guard runs:
	// each ban takes the bans lock and finds the backend holding them.
	bans := guard.NewFollowing(b,
		func(ctx context.Context) (func(), error) { return engine.LockBans(ctx, a.stateDir, false) },
		func(ctx context.Context) (guard.Banner, error) {
			nb, err := a.banBackend(ctx)
			if err != nil {
				return nil, err
			}
			return nb, nil
		})
	bans.Warn = func(err error) { a.log.With("component", "guard").Warn("ban without the bans lock", "err", err) }
	svc := &guard.Service{Cfg: p.Guard, Bans: bans, StateDir: a.stateDir, Log: a.log.With("component", "guard"), Reload: reload}
	// Refuse at once when another guard runs on this state.
	if err := svc.Lock(); err != nil {
		return err
	}
	var what string
	// A reload that finds the guard turned off ends it (exit 0: systemd's
	// Restart=on-failure leaves it stopped).
	ctx, stop := context.WithCancel(ctx)
	defer stop()
	// SIGHUP (systemctl reload moat-guard) re-reads the guard's settings.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-hup:
				np, err := a.loadPolicy()
				if err != nil {
					a.log.Error("reload: the policy is invalid; keeping the old settings", "err", err)
					continue
				}
				if !np.Guard.Enabled {
					fmt.Fprintf(a.errOut, "moat guard: the guard is off in %s ('guard sshd off'): stopping; bans already made run out\n", a.config)
					stop()
					return
				}
				select {
				case reload <- np.Guard:
				case <-ctx.Done():
					return
				}
				// Once the main loop has them: every line read after this
				// message counts with the new settings.
				fmt.Fprintf(a.errOut, "moat guard: reloaded settings from %s\n", a.config)
			}
		}
	}()
	if metricsAddr != "" {
		m, serve := GuardMetrics()
		svc.Metrics = m
		go func() {
			if err := serve(ctx, metricsAddr); err != nil {
				a.log.Error("metrics", "err", err)
			}
		}()
	}
	svc.Ready = func() {
		fmt.Fprintf(a.errOut, "moat guard: following %s (%s backend; ban after %d failures in %s, for %s up to %s)\n",
			what, bans.Name(), p.Guard.MaxRetry, p.Guard.FindTime, p.Guard.BanTime, p.Guard.BanTimeMax)
		a.sdNotify(daemon.SdNotifyReady)
	}
	svc.Status = func(msg string) {
		// One line: a newline in an error would start another assignment.
		a.sdNotify("STATUS=" + strings.Join(strings.Fields(msg), " "))
	}
	if interval, err := daemon.SdWatchdogEnabled(false); err == nil && interval > 0 {
		// Pinged only while the main loop makes progress or waits idle and
		// healthy: a guard stuck in a kernel call is restarted.
		svc.BeatEvery = guard.WatchdogBeat(interval)
		go svc.Watchdog(ctx, interval, func() { a.sdNotify(daemon.SdNotifyWatchdog) })
	}
	err = svc.RunWith(ctx, func(st *guard.State) (guard.Source, error) {
		src, w, err := pickSource(logFile, journalctl, st)
		what = w
		return src, err
	})
	a.sdNotify(daemon.SdNotifyStopping)
	if errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}

type checkLine struct {
	Line    int    `json:"line"`
	Match   bool   `json:"match"`
	Kind    string `json:"kind,omitempty"`
	Addr    string `json:"addr,omitempty"`
	User    string `json:"user,omitempty"`
	Service string `json:"service,omitempty"`
	PID     int    `json:"pid,omitempty"`
	Reason  string `json:"reason,omitempty"`
	// Also: further failures this line makes count (a connection's
	// address-less lines, once it is known).
	Also []checkCount `json:"also,omitempty"`
}

type checkCount struct {
	Kind string `json:"kind"`
	Addr string `json:"addr"`
}

type checkSummary struct {
	Lines     int            `json:"lines"`
	Matched   int            `json:"matched"`
	Addresses int            `json:"addresses"`
	ByKind    map[string]int `json:"by_kind"`
	Top       []addrCount    `json:"top_addresses"`
	// Open are connections still holding rejected keys at the end of the
	// input: each counts once if it ends without a login.
	Open []checkCount `json:"open_connections,omitempty"`
	// Never are counted addresses the guard would refuse to ban here.
	Never []neverBanned `json:"never_banned,omitempty"`
}

type neverBanned struct {
	Addr string `json:"addr"`
	Why  string `json:"why"`
}

type addrCount struct {
	Addr     string `json:"addr"`
	Failures int    `json:"failures"`
}

func (a *app) guardCheckCommand() *cobra.Command {
	var locals []string
	cmd := &cobra.Command{
		Use: "check FILE|-",
		Example: `  moat guard check /var/log/auth.log
  journalctl -u ssh -o json | moat guard check -`,
		Short: "Show what the guard sees in log lines, and why (like fail2ban-regex)",
		Long: `Read log lines (syslog, RFC 5424, ISO timestamps, journalctl's short
forms and -o cat, sshd -E, or journalctl -o json) and print one JSON object
a line: {"line": N, "match": true|false, "kind": "...", "addr": "...",
"user": "...", "reason": "..."}. "match" is true for lines that count
against an address, judged as the running guard judges them: a rejected
key is held with its sshd connection (by PID, or client address and port)
and counts once only if that connection ends without a login; lines
naming no address count against their connection's; a line with the
server's and the client's address (OpenSSH 9.8's timeout) counts against
the one that is not this host's (--local adds addresses of the host the
log comes from). Addresses the guard would never ban (this host's,
loopback, logged-in sessions', the allowlist's) are named in the reason.
A last line {"summary": ...} counts lines, failures by kind and
addresses, and lists the connections still open at the end and the
addresses never banned.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var extra []netip.Addr
			for _, l := range locals {
				ad, err := netip.ParseAddr(l)
				if err != nil {
					return fmt.Errorf("bad --local %q: expected an IPv4 or IPv6 address", l)
				}
				extra = append(extra, ad.Unmap())
			}
			var in io.Reader = os.Stdin
			if args[0] != "-" {
				f, err := os.Open(args[0])
				if err != nil {
					return fmt.Errorf("guard check: %w", err)
				}
				defer func() { _ = f.Close() }() // read only
				in = f
			}
			return a.guardCheck(in, extra)
		},
	}
	cmd.Flags().StringSliceVar(&locals, "local", nil, "an address of the host the log comes from (besides this host's)")
	return cmd
}

func (a *app) guardCheck(in io.Reader, locals []netip.Addr) error {
	// The log's text (user names, services) is the attacker's: the lines
	// are escaped for a terminal (termtext.AppendJSON).
	enc := termtext.NewJSONEncoder(a.out)
	sum := checkSummary{ByKind: map[string]int{}}
	perAddr := map[string]int{}
	// The addresses the guard would never ban here: this host's, its
	// logged-in sessions', the policy's allowlist (when there is a policy),
	// and --local.
	prot := &guard.Protector{}
	if p, err := a.loadPolicy(); err == nil {
		prot.Allowlist = p.Guard.Allowlist
	}
	refused := map[netip.Addr]string{}
	judge := guard.NewJudge(func(ad netip.Addr) bool {
		return slices.Contains(locals, ad) || prot.IsLocal(ad)
	})
	// Lines are read as the guard's sources read them: one too long for
	// the guard is skipped here too, and reading goes on.
	err := guard.ReadLines(in, func(text, skip string) error {
		sum.Lines++
		if skip != "" {
			return enc.Encode(checkLine{Line: sum.Lines, Reason: "not counted: longer than any line of sshd's; the guard skips it"})
		}
		var ev guard.Event
		var ok bool
		untrusted := ""
		if len(text) > 0 && text[0] == '{' {
			l, err := guard.ParseTrustedJournalEntry([]byte(text))
			switch {
			case errors.Is(err, guard.ErrUntrusted):
				untrusted = "not counted: a journal entry sshd did not write (its _COMM, _EXE, _UID or unit)"
			case err == nil:
				ev, ok = guard.ParseMessage(l.Prog, l.Text)
				ev.PID = l.PID
			}
		} else if !guard.TrustedFileLine(text) {
			untrusted = "not counted: a syslog line without sshd's tag and PID (anyone can write those)"
		} else {
			ev, ok = guard.ParseLine(text)
		}
		out := checkLine{Line: sum.Lines, Reason: untrusted}
		if untrusted != "" {
			// Say what the line would have been, as the guard skips it.
			if uev, uok := guard.ParseLine(text); uok && len(text) > 0 && text[0] != '{' {
				out.Kind = string(uev.Kind)
			}
		}
		if ok {
			v := judge.Judge(ev, time.Now())
			out.Kind, out.User, out.Service, out.PID, out.Reason = string(ev.Kind), ev.User, ev.Service, ev.PID, v.Reason
			if ev.Addr.IsValid() && !ev.Other.IsValid() {
				out.Addr = ev.Addr.String()
			}
			for i, c := range v.Count {
				why, never := prot.Refuse(c.Addr)
				if slices.Contains(locals, c.Addr) {
					why, never = "it is an address of the log's host (--local)", true
				}
				if never {
					out.Reason += fmt.Sprintf("; %s is never banned: %s", c.Addr, why)
					if _, seen := refused[c.Addr]; !seen {
						refused[c.Addr] = why
						sum.Never = append(sum.Never, neverBanned{c.Addr.String(), why})
					}
				}
				if i == 0 {
					out.Match, out.Kind, out.Addr = true, string(c.Kind), c.Addr.String()
				} else {
					out.Also = append(out.Also, checkCount{string(c.Kind), c.Addr.String()})
				}
				sum.Matched++
				sum.ByKind[string(c.Kind)]++
				perAddr[c.Addr.String()]++
			}
		}
		return enc.Encode(out)
	})
	if err != nil {
		return fmt.Errorf("guard check: %w", err)
	}
	for _, c := range judge.Open() {
		sum.Open = append(sum.Open, checkCount{string(c.Kind), c.Addr.String()})
	}
	sum.Addresses = len(perAddr)
	for ad, n := range perAddr {
		sum.Top = append(sum.Top, addrCount{ad, n})
	}
	sort.Slice(sum.Top, func(i, j int) bool {
		if sum.Top[i].Failures != sum.Top[j].Failures {
			return sum.Top[i].Failures > sum.Top[j].Failures
		}
		return sum.Top[i].Addr < sum.Top[j].Addr
	})
	if len(sum.Top) > 10 {
		sum.Top = sum.Top[:10]
	}
	return enc.Encode(map[string]checkSummary{"summary": sum})
}

// sdNotify tells systemd the guard's state; outside systemd it does
// nothing. A failure is logged: systemd then restarts the guard by its
// watchdog, which is the right outcome.
func (a *app) sdNotify(state string) {
	if _, err := daemon.SdNotify(false, state); err != nil {
		a.log.Warn("sd_notify", "state", state, "err", err)
	}
}
