package guard

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"runtime/debug"
	"sync/atomic"
	"time"

	"github.com/moat-fw/moat/internal/policy"
	"github.com/moat-fw/moat/internal/ruleset"
	"github.com/moat-fw/moat/internal/statedir"
)

// Banner is what the guard needs of a backend.
type Banner interface {
	Ban(ctx context.Context, bans []ruleset.Ban) error
	Bans(ctx context.Context) ([]ruleset.Ban, error)
}

// BanChecker is a Banner that can say whether one address is banned
// without listing every ban (both backends are).
type BanChecker interface {
	Banned(ctx context.Context, a netip.Addr) (bool, error)
}

// LoginProtector is a Banner that can exempt addresses that logged in over
// SSH from the port scan trap for a while (both backends are).
type LoginProtector interface {
	Protect(ctx context.Context, addrs []netip.Addr, ttl time.Duration) error
}

// LoginProtectTTL is how long an address that logged in over SSH stays
// exempt from the port scan trap; each login starts it again.
const LoginProtectTTL = 24 * time.Hour

// protectLogin exempts a login's address from the port scan trap (the
// trap's protected sets only hold the sessions live at the last apply): an
// admin who logged in since is not banned for probing ports. A login
// line older than the TTL (a replayed log) protects nothing.
func (s *Service) protectLogin(ctx context.Context, ev Event, at time.Time) {
	p, ok := s.Bans.(LoginProtector)
	if !ok || ev.Kind != Accepted || !ev.Addr.IsValid() {
		return
	}
	ttl := LoginProtectTTL
	if !at.IsZero() {
		ttl -= time.Since(at)
	}
	if ttl <= time.Second {
		return
	}
	a := ev.Addr.Unmap()
	if err := p.Protect(ctx, []netip.Addr{a}, ttl); err != nil {
		// No trap loaded, or moat inactive: nothing to exempt from.
		s.Log.Debug("login not exempted from the port scan trap", "addr", a, "err", err)
		return
	}
	s.Log.Info("login exempted from the port scan trap", "addr", a, "for", ttl.Round(time.Second))
}

// Source sends log lines until its context ends.
type Source interface {
	Run(ctx context.Context, out chan<- Line) error
}

// Service is the long-running guard.
type Service struct {
	Cfg      policy.Guard
	Bans     Banner
	StateDir string
	Log      *slog.Logger
	Metrics  *Metrics // may be nil
	// Ready is called once the source runs (sd_notify READY=1).
	Ready func()
	// SaveEvery is how often the read position is saved without bans.
	SaveEvery time.Duration
	// Reload delivers new settings (the policy was edited; SIGHUP).
	Reload <-chan policy.Guard
	// Protect refuses bans of this host's and its admins' addresses
	// (default: a Protector with Cfg's allowlist).
	Protect *Protector
	// Status, when set, is told the guard's state in a line for the
	// service manager (sd_notify STATUS=): bans failing, bans landing again.
	Status func(string)
	// BeatEvery is how often an idle main loop stamps its heartbeat
	// (default SaveEvery); see Alive.
	BeatEvery time.Duration
	// RetryMin is the first backoff after a refused ban call (default a
	// second); it doubles up to a minute.
	RetryMin time.Duration

	instance  *statedir.Lock
	beat      atomic.Int64 // unix nanoseconds of the main loop's last progress
	stateSize int64        // of guard.json after the last fold
}

// keep is how long history is kept after a ban ended: bantime-max (the
// longest a ban can last), at least bantime.
func (s *Service) keep() time.Duration {
	return max(s.Cfg.BanTime, s.Cfg.BanTimeMax)
}

func fileSize(dir, name string) int64 {
	fi, err := os.Lstat(filepath.Join(dir, name))
	if err != nil {
		return 0
	}
	return fi.Size()
}

// compact drops history older than bantime-max (from memory too) and folds
// the journal into guard.json. Everything in memory has been appended to
// the journal before, so the files hold the same history.
func (s *Service) compact(history map[netip.Addr]*Record) error {
	now := time.Now()
	pruneHistory(history, now, s.keep())
	err := updateState(s.StateDir, s.Log, func(st *State) error {
		st.Prune(now, s.keep())
		return nil
	})
	s.stateSize = fileSize(s.StateDir, stateFile)
	return err
}

// maxBatch bounds how many bans go to the kernel in one call.
const maxBatch = 1000

// compactAt is the journal size (bytes) past which it is folded into the
// state file, unless the state file is larger: folding rewrites the whole
// history, so it waits until the journal is as large as the history.
const compactAt = 4 << 20

// pruneEvery is how often history older than bantime-max is dropped.
const pruneEvery = time.Hour

// Restore puts back bans the history says are active but the kernel lost
// (a reboot, a crash while moat's rules were reloaded), with the time they
// have left. It returns how many it re-inserted.
func (s *Service) Restore(ctx context.Context, st *State, now time.Time) (int, error) {
	live, err := s.Bans.Bans(ctx)
	if err != nil {
		return 0, err
	}
	have := map[netip.Addr]bool{}
	for _, b := range live {
		have[b.Addr] = true
	}
	var missing []ruleset.Ban
	for a, r := range st.Bans {
		if left := r.Until.Sub(now); left > time.Second && !have[a] {
			// An address may have become this host's, or a logged-in
			// admin's, since it was banned.
			if why, refused := s.protector().Refuse(a); refused {
				s.Log.Warn("refused to ban", "address", a, "why", why, "line", "(a ban of the history, put back at start)")
				continue
			}
			missing = append(missing, ruleset.Ban{Addr: a, Timeout: left, Reason: r.Reason})
		}
	}
	if len(missing) == 0 {
		return 0, nil
	}
	if err := s.Bans.Ban(ctx, missing); err != nil {
		return 0, err
	}
	return len(missing), nil
}

// protector is Protect, or one made from the settings' allowlist.
func (s *Service) protector() *Protector {
	if s.Protect == nil {
		s.Protect = &Protector{Allowlist: s.Cfg.Allowlist}
	}
	return s.Protect
}

// Alive says whether the main loop (the one that reads lines and bans)
// made progress, or waited idle and healthy, within the last within. The
// systemd watchdog is pinged only then: a loop stuck in a kernel call or
// a lock stops the pings, and systemd restarts the guard.
func (s *Service) Alive(within time.Duration) bool {
	at := s.beat.Load()
	return at != 0 && time.Since(time.Unix(0, at)) <= within
}

// Watchdog calls ping (sd_notify WATCHDOG=1) every interval/3 while the
// main loop is Alive within interval/2, until ctx ends. interval is the
// service manager's watchdog timeout; set BeatEvery below interval/2
// (WatchdogBeat) so an idle loop stays alive.
func (s *Service) Watchdog(ctx context.Context, interval time.Duration, ping func()) {
	t := time.NewTicker(max(interval/3, time.Millisecond))
	defer t.Stop()
	stale := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if s.Alive(interval / 2) {
				stale = false
				ping()
			} else if !stale {
				stale = true
				s.Log.Error("the guard's main loop made no progress: not pinging the watchdog (systemd restarts a guard that stays stuck)",
					"last_progress", time.Unix(0, s.beat.Load()))
			}
		}
	}
}

// WatchdogBeat is the BeatEvery for a watchdog timeout of interval.
func WatchdogBeat(interval time.Duration) time.Duration {
	return max(interval/4, time.Millisecond)
}

func (s *Service) stamp() { s.beat.Store(time.Now().UnixNano()) }

// retryMax bounds the backoff of ban calls the kernel refused.
const retryMax = time.Minute

// maxWanted bounds the bans kept in memory for a retry; past it they
// are only in the history, and put back from there on recovery.
const maxWanted = 1 << 16

// failingLoud is how many ban calls in a row must fail before the guard
// reports that it cannot ban at all (status line, error log).
const failingLoud = 5

// Run follows the source, detects and bans until ctx ends.
func (s *Service) Run(ctx context.Context, src Source) error {
	return s.RunWith(ctx, func(*State) (Source, error) { return src, nil })
}

// AlreadyRunningError says another guard holds the state directory. It
// is ErrRunning.
type AlreadyRunningError struct {
	Dir string
	PID int
}

func (e *AlreadyRunningError) Error() string {
	return fmt.Sprintf("%v (pid %d) on the state directory %s: two guards would ban twice and overwrite each other's history; stop it first (systemctl stop moat-guard)",
		ErrRunning, e.PID, e.Dir)
}

func (e *AlreadyRunningError) Unwrap() error { return ErrRunning }

// Lock takes the guard's instance lock (guard.pid in the state directory,
// see Running), or returns an *AlreadyRunningError naming the PID that
// holds it. RunWith takes it itself; call Lock first to refuse before
// doing anything else.
func (s *Service) Lock() error {
	if s.instance != nil {
		return nil
	}
	l, err := statedir.TryLock(s.StateDir, runFile)
	var held *statedir.HeldError
	if errors.As(err, &held) {
		return &AlreadyRunningError{Dir: s.StateDir, PID: held.PID}
	}
	if err != nil {
		return fmt.Errorf("guard: %w", err)
	}
	s.instance = l
	return nil
}

// RunWith is Run with a source chosen from the saved state (where to
// resume), read once the instance lock is held.
func (s *Service) RunWith(ctx context.Context, pick func(*State) (Source, error)) error {
	if err := s.Lock(); err != nil {
		return err
	}
	defer func() { s.instance.Unlock(); s.instance = nil }()
	// Start from a compact, pruned state: the journal folded in, a corrupt
	// file moved aside, history older than bantime-max dropped.
	var st *State
	err := updateState(s.StateDir, s.Log, func(loaded *State) error {
		if n := loaded.Prune(time.Now(), s.keep()); n > 0 {
			s.Log.Info("forgot ban history older than bantime-max", "addresses", n, "kept_for", s.keep().String())
		}
		st = loaded
		return nil
	})
	if err != nil {
		return err
	}
	s.stateSize = fileSize(s.StateDir, stateFile)
	src, err := pick(st)
	if err != nil {
		return err
	}
	s.stamp()
	// A kernel that refuses the lost bans (a full set, nft failing) must
	// not stop the guard: they are retried with the failed bans below.
	restore := func() error {
		n, err := s.Restore(ctx, st, time.Now())
		if err != nil {
			return fmt.Errorf("put back the bans the kernel lost: %w", err)
		}
		if n > 0 {
			s.Log.Info("re-inserted bans the kernel had lost", "count", n)
		}
		return nil
	}
	restoreErr := restore()
	needRestore := restoreErr != nil
	det := NewDetector(s.Cfg, st.Bans)
	st.Bans = det.History() // a restore after a failure reads the live history
	det.StillBanned = s.kernelBanCheck(ctx)
	prot := s.protector()
	judge := NewJudge(prot.IsLocal)
	var cur *Line // the line being judged, for the log of a refusal
	det.Refuse = prot.Refuse
	det.Refused = func(ev Event, why string) {
		line := ""
		if cur != nil {
			line = cur.Text
		}
		s.Log.Warn("refused to ban", "address", ev.Addr, "why", why, "kind", ev.Kind, "line", line)
	}
	srcCtx, stopSrc := context.WithCancel(ctx)
	defer stopSrc()
	lines := make(chan Line, 4096)
	errc := make(chan error, 1)
	go func() { errc <- src.Run(srcCtx, lines) }()
	// Ready once the source reads every line written from now on: READY=1
	// (and a caller that writes the log then) came while a file source
	// had not yet opened its file at its end, and what was written in
	// between was never read.
	if f, ok := src.(interface{ Following() <-chan struct{} }); ok {
		select {
		case <-f.Following():
		case err := <-errc:
			errc <- err // the source failed: the main loop reports it
		case <-ctx.Done():
		}
	}
	if s.Ready != nil {
		s.Ready()
	}
	every := s.SaveEvery
	if every == 0 {
		every = 2 * time.Second
	}
	tick := time.NewTicker(every)
	defer tick.Stop()
	lastPrune := time.Now()

	var batch []ruleset.Ban
	var seen []time.Time  // when each banned line was written, for latency
	var until []time.Time // when each ban of batch ends (for a retry)
	// A failed ban call keeps its bans in batch (the history has them as
	// wanted, on disk too) and retries them after a backoff; the loop goes
	// on reading and judging meanwhile.
	var retryC <-chan time.Time
	var retryTimer *time.Timer
	defer func() {
		if retryTimer != nil {
			retryTimer.Stop()
		}
	}()
	backoff := time.Duration(0)
	failing := 0 // ban calls failed in a row
	var failingSince time.Time
	dirty := map[netip.Addr]bool{}
	var pos *Line // the last line processed: where to resume
	moved := false
	burst := 0 // bans since the last tick

	// save appends the new bans and the read position to the journal; when
	// the journal has grown, it is folded into the state file.
	save := func() error {
		if !moved && len(dirty) == 0 {
			return nil
		}
		recs := make(map[netip.Addr]*Record, len(dirty))
		for a := range dirty {
			r := *det.History()[a]
			recs[a] = &r
		}
		var cursor string
		var file *FilePos
		if pos != nil {
			cursor, file = pos.Cursor, pos.File
		}
		size, err := Append(s.StateDir, recs, cursor, file)
		if err != nil {
			return err
		}
		dirty, moved = map[netip.Addr]bool{}, false
		if size > max(compactAt, s.stateSize) {
			return s.compact(det.History())
		}
		return nil
	}
	setPending := func() {
		if s.Metrics != nil {
			s.Metrics.BansPending.Set(float64(len(batch)))
		}
	}
	// fail records a refused ban call and arms the retry.
	fail := func(err error, addrs []netip.Addr) {
		failing++
		if failing == 1 {
			failingSince = time.Now()
		}
		first := s.RetryMin
		if first <= 0 {
			first = time.Second
		}
		backoff = min(max(2*backoff, first), max(retryMax, first))
		if s.Metrics != nil {
			s.Metrics.BanErrors.Inc()
			s.Metrics.BanFailing.Set(1)
		}
		shown := addrs[:min(len(addrs), 20)]
		s.Log.Error("ban failed; kept as wanted and retried", "addresses", shown, "count", len(addrs), "err", err, "retry_in", backoff.String(), "failed_in_a_row", failing)
		if failing == failingLoud {
			msg := fmt.Sprintf("cannot ban: the kernel refused %d ban calls in a row since %s: %v", failing, failingSince.UTC().Format(time.RFC3339), err)
			s.Log.Error(msg)
			if s.Status != nil {
				s.Status(msg)
			}
		}
		if retryTimer != nil {
			retryTimer.Stop()
		}
		retryTimer = time.NewTimer(backoff)
		retryC = retryTimer.C
	}
	recovered := func() {
		if failing == 0 {
			return
		}
		s.Log.Info("bans land again", "failed_in_a_row", failing, "since", failingSince)
		if failing >= failingLoud && s.Status != nil {
			s.Status("banning")
		}
		failing, backoff = 0, 0
		if s.Metrics != nil {
			s.Metrics.BanFailing.Set(0)
		}
	}
	flush := func() error {
		if needRestore && retryC == nil {
			if err := restore(); err != nil {
				fail(err, nil)
			} else {
				needRestore = false
			}
		}
		if len(batch) == 0 || retryC != nil {
			setPending()
			return save() // failed bans are wanted: history on disk
		}
		if failing > 0 {
			// Bans that waited for a retry get what is left of their time.
			now := time.Now()
			keep := 0
			for i := range batch {
				if left := until[i].Sub(now); left > time.Second {
					batch[i].Timeout = left.Round(time.Second)
					batch[keep], seen[keep], until[keep] = batch[i], seen[i], until[i]
					keep++
				}
			}
			batch, seen, until = batch[:keep], seen[:keep], until[:keep]
			if len(batch) == 0 {
				recovered()
				setPending()
				return save()
			}
		}
		for len(batch) > 0 {
			n := min(maxBatch, len(batch))
			if err := s.Bans.Ban(ctx, batch[:n]); err != nil {
				if ctx.Err() != nil {
					return save()
				}
				addrs := make([]netip.Addr, len(batch))
				for i, b := range batch {
					addrs[i] = b.Addr
				}
				fail(err, addrs)
				setPending()
				return save() // the history holds them as wanted
			}
			recovered()
			done := time.Now()
			for i, b := range batch[:n] {
				s.Log.Warn("banned", "address", b.Addr, "for", b.Timeout.String(), "reason", b.Reason)
				if s.Metrics != nil {
					s.Metrics.BansTotal.Inc()
					s.Metrics.BanLatency.Observe(done.Sub(seen[i]).Seconds())
				}
			}
			burst += n
			batch, seen, until = batch[n:], seen[n:], until[n:]
		}
		batch, seen, until = batch[:0], seen[:0], until[:0]
		setPending()
		return save() // history first on disk, so a crash keeps escalation
	}
	observe := func(evs []Event, at time.Time) {
		for _, ev := range evs {
			if s.Metrics != nil {
				s.Metrics.Failures.WithLabelValues(string(ev.Kind)).Inc()
			}
			if ban, ok := det.Observe(ev, time.Now()); ok {
				dirty[ban.Addr] = true
				if len(batch) >= maxWanted {
					// The kernel has refused bans for long: the history
					// holds this one as wanted; a restore puts it in once
					// bans land again.
					needRestore = true
					continue
				}
				batch = append(batch, ban)
				seen = append(seen, at)
				until = append(until, time.Now().Add(ban.Timeout))
			}
		}
	}
	skipped := map[string]bool{}
	skip := func(reason string) {
		if s.Metrics != nil {
			s.Metrics.Skipped.WithLabelValues(reason).Inc()
		}
		if !skipped[reason] {
			skipped[reason] = true // once: the lines may be a flood
			s.Log.Warn("skipping log lines (counted in moat_guard_lines_skipped_total)", "reason", reason)
		}
	}
	handle := func(l Line) {
		if l.Cursor != "" || l.File != nil {
			pos, moved = &l, true
		}
		if s.Metrics != nil {
			s.Metrics.Lines.Inc()
		}
		if l.Skip != "" {
			skip(l.Skip)
			return
		}
		var ev Event
		var ok bool
		if l.Prog != "" {
			ev, ok = ParseMessage(l.Prog, l.Text)
			ev.PID = l.PID
		} else {
			var trusted bool
			if ev, ok, trusted = parseFileLine(l.Text); !trusted {
				skip(SkipUntrusted)
				return
			}
		}
		if !ok {
			return
		}
		cur = &l
		s.protectLogin(ctx, ev, l.Time)
		observe(judge.Judge(ev, time.Now()).Count, l.Time)
		cur = nil
	}
	if restoreErr != nil {
		fail(restoreErr, nil)
	}
	beatEvery := s.BeatEvery
	if beatEvery <= 0 {
		beatEvery = every
	}
	beat := time.NewTicker(beatEvery)
	defer beat.Stop()
	for {
		s.stamp()
		select {
		case <-beat.C:
			// Idle and healthy: the stamp above says so.
		case <-retryC:
			retryC, retryTimer = nil, nil
			if err := flush(); err != nil {
				s.Log.Error("save guard state", "err", err)
			}
		case <-ctx.Done():
			stopSrc()
			return errors.Join(flush(), save())
		case err := <-errc:
			return errors.Join(err, flush(), save())
		case cfg := <-s.Reload:
			det.cfg, s.Cfg = cfg, cfg
			prot.Allowlist = cfg.Allowlist
			s.Log.Info("settings reloaded", "maxretry", cfg.MaxRetry, "findtime", cfg.FindTime, "bantime", cfg.BanTime, "allowlist", len(cfg.Allowlist))
		case <-tick.C:
			if burst > 1000 {
				// A wave of bans leaves garbage (log lines, scripts, JSON);
				// give it back now rather than holding the peak for minutes.
				debug.FreeOSMemory()
			}
			burst = 0
			// Connections silent past the judge's idle time have ended:
			// what they held counts now.
			cur = &Line{Text: "(connections silent too long: what they held)"}
			observe(judge.Sweep(time.Now()), time.Now())
			cur = nil
			if err := flush(); err != nil {
				s.Log.Error("save guard state", "err", err)
			}
			if s.Metrics != nil {
				s.Metrics.BansActive.Set(float64(activeBans(det.History(), time.Now())))
			}
			if err := save(); err != nil {
				s.Log.Error("save guard state", "err", err)
			} else if time.Since(lastPrune) > pruneEvery {
				lastPrune = time.Now()
				if err := s.compact(det.History()); err != nil {
					s.Log.Error("compact guard state", "err", err)
				}
			}
		case l := <-lines:
			handle(l)
			// Take what else is waiting, then ban it all in one batch.
		more:
			for len(batch) < maxBatch {
				select {
				case l := <-lines:
					handle(l)
				default:
					break more
				}
			}
			if err := flush(); err != nil {
				return errors.Join(err, save())
			}
		}
	}
}

func activeBans(h map[netip.Addr]*Record, now time.Time) int {
	n := 0
	for _, r := range h {
		if r.Until.After(now) {
			n++
		}
	}
	return n
}

// kernelBanCheck asks the kernel whether an address is still banned: one
// lookup when the backend can (BanChecker), else from the whole ban list,
// read at most once a second. It is only asked about lines from addresses
// the history says are banned.
func (s *Service) kernelBanCheck(ctx context.Context) func(netip.Addr) bool {
	if bc, ok := s.Bans.(BanChecker); ok {
		// One lookup per question: listing 200,000 bans costs seconds.
		return func(a netip.Addr) bool {
			banned, err := bc.Banned(ctx, a)
			return banned || err != nil // unsure: do not ban twice
		}
	}
	var at time.Time
	live := map[netip.Addr]bool{}
	return func(a netip.Addr) bool {
		if time.Since(at) > time.Second {
			bans, err := s.Bans.Bans(ctx)
			if err != nil {
				return true // unsure: do not ban twice
			}
			live = make(map[netip.Addr]bool, len(bans))
			for _, b := range bans {
				live[b.Addr] = true
			}
			at = time.Now()
		}
		return live[a]
	}
}
