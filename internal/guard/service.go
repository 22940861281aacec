package guard

import (
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"runtime/debug"
	"time"

	"github.com/moat-fw/moat/internal/policy"
	"github.com/moat-fw/moat/internal/ruleset"
)

// Banner is what the guard needs of a backend.
type Banner interface {
	Ban(ctx context.Context, bans []ruleset.Ban) error
	Bans(ctx context.Context) ([]ruleset.Ban, error)
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
}

// maxBatch bounds how many bans go to the kernel in one call.
const maxBatch = 1000

// compactAt is the journal size (bytes) past which it is folded into the
// state file.
const compactAt = 16 << 20

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
			missing = append(missing, ruleset.Ban{Addr: a, Timeout: left, Reason: r.Reason})
		}
	}
	if err := s.Bans.Ban(ctx, missing); err != nil {
		return 0, err
	}
	return len(missing), nil
}

// Run follows the source, detects and bans until ctx ends.
func (s *Service) Run(ctx context.Context, src Source) error {
	st, err := LoadState(s.StateDir)
	if err != nil {
		return err
	}
	n, err := s.Restore(ctx, st, time.Now())
	if err != nil {
		return err
	}
	if n > 0 {
		s.Log.Info("re-inserted bans the kernel had lost", "count", n)
	}
	det := NewDetector(s.Cfg, st.Bans)
	det.StillBanned = s.kernelBanCheck(ctx)
	prot := s.Protect
	if prot == nil {
		prot = &Protector{Allowlist: s.Cfg.Allowlist}
	}
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
	if s.Ready != nil {
		s.Ready()
	}
	every := s.SaveEvery
	if every == 0 {
		every = 2 * time.Second
	}
	tick := time.NewTicker(every)
	defer tick.Stop()

	var batch []ruleset.Ban
	var seen []time.Time // when each banned line was written, for latency
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
		if size > compactAt {
			return UpdateState(s.StateDir, func(*State) error { return nil })
		}
		return nil
	}
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		if err := s.Bans.Ban(ctx, batch); err != nil {
			return err
		}
		done := time.Now()
		for i, b := range batch {
			s.Log.Warn("banned", "address", b.Addr, "for", b.Timeout.String(), "reason", b.Reason)
			if s.Metrics != nil {
				s.Metrics.BansTotal.Inc()
				s.Metrics.BanLatency.Observe(done.Sub(seen[i]).Seconds())
			}
		}
		burst += len(batch)
		batch, seen = batch[:0], seen[:0]
		return save() // history first on disk, so a crash keeps escalation
	}
	observe := func(evs []Event, at time.Time) {
		for _, ev := range evs {
			if s.Metrics != nil {
				s.Metrics.Failures.WithLabelValues(string(ev.Kind)).Inc()
			}
			if ban, ok := det.Observe(ev, time.Now()); ok {
				batch = append(batch, ban)
				seen = append(seen, at)
				dirty[ban.Addr] = true
			}
		}
	}
	handle := func(l Line) {
		pos, moved = &l, true
		if s.Metrics != nil {
			s.Metrics.Lines.Inc()
		}
		var ev Event
		var ok bool
		if l.Prog != "" {
			ev, ok = ParseMessage(l.Prog, l.Text)
			ev.PID = l.PID
		} else {
			ev, ok = ParseLine(l.Text)
		}
		if !ok {
			return
		}
		cur = &l
		observe(judge.Judge(ev, time.Now()).Count, l.Time)
		cur = nil
	}
	for {
		select {
		case <-ctx.Done():
			stopSrc()
			return errors.Join(flush(), save())
		case err := <-errc:
			return errors.Join(err, flush(), save())
		case cfg := <-s.Reload:
			det.cfg = cfg
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
			observe(judge.Sweep(time.Now()), time.Now())
			if err := flush(); err != nil {
				s.Log.Error("ban", "err", err)
			}
			if s.Metrics != nil {
				s.Metrics.BansActive.Set(float64(activeBans(det.History(), time.Now())))
			}
			if err := save(); err != nil {
				s.Log.Error("save guard state", "err", err)
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

// kernelBanCheck answers from the kernel's ban list, read at most once a
// second: it is only asked about lines from addresses the history says are
// banned, which are rare.
func (s *Service) kernelBanCheck(ctx context.Context) func(netip.Addr) bool {
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
