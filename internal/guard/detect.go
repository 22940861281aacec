package guard

import (
	"math"
	"net/netip"
	"time"

	"github.com/moat-fw/moat/internal/policy"
	"github.com/moat-fw/moat/internal/ruleset"
)

// Allowed reports whether an address is on the allowlist.
func Allowed(list []netip.Prefix, a netip.Addr) bool {
	for _, p := range list {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

type failure struct {
	at     time.Time
	weight float64
	kind   Kind
}

// Detector counts failures per address within findtime and decides bans,
// longer for repeat offenders.
type Detector struct {
	cfg     policy.Guard
	fails   map[netip.Addr][]failure
	history map[netip.Addr]*Record
	seen    int
	// StillBanned says whether the kernel still holds an address's ban
	// (nil: trust the history).
	StillBanned func(netip.Addr) bool
	// Refuse is asked when an address reached maxretry, before the ban:
	// a refused address (this host's, a logged-in admin's) is not banned
	// and Refused is told why (both may be nil).
	Refuse  func(netip.Addr) (why string, refused bool)
	Refused func(ev Event, why string)
}

// NewDetector starts from a ban history (may be nil).
func NewDetector(cfg policy.Guard, history map[netip.Addr]*Record) *Detector {
	if history == nil {
		history = map[netip.Addr]*Record{}
	}
	return &Detector{cfg: cfg, fails: map[netip.Addr][]failure{}, history: history}
}

// History is the ban history the detector keeps up to date.
func (d *Detector) History() map[netip.Addr]*Record { return d.history }

// Observe takes one event and returns a ban when the address reached
// maxretry within findtime.
func (d *Detector) Observe(ev Event, now time.Time) (ruleset.Ban, bool) {
	if !ev.Kind.Failure() || !ev.Addr.IsValid() || Allowed(d.cfg.Allowlist, ev.Addr) {
		return ruleset.Ban{}, false
	}
	weight := 1.0
	if ev.Kind.Weak() {
		weight = d.cfg.WeakWeight
	}
	if weight <= 0 {
		return ruleset.Ban{}, false
	}
	// A banned address can send nothing: its lines are stragglers of
	// connections that were open, unless the ban is gone ('moat unban', a
	// lost set), which StillBanned asks the kernel.
	if r := d.history[ev.Addr]; r != nil && r.Until.After(now) && (d.StillBanned == nil || d.StillBanned(ev.Addr)) {
		return ruleset.Ban{}, false
	}
	d.seen++
	if d.seen%4096 == 0 {
		d.sweep(now)
	}
	cutoff := now.Add(-d.cfg.FindTime)
	list := d.fails[ev.Addr][:0:0]
	sum := weight
	for _, f := range d.fails[ev.Addr] {
		if f.at.After(cutoff) {
			list = append(list, f)
			sum += f.weight
		}
	}
	list = append(list, failure{at: now, weight: weight, kind: ev.Kind})
	if sum+1e-9 < float64(d.cfg.MaxRetry) {
		d.fails[ev.Addr] = list
		return ruleset.Ban{}, false
	}
	delete(d.fails, ev.Addr)
	if d.Refuse != nil {
		if why, refused := d.Refuse(ev.Addr); refused {
			if d.Refused != nil {
				d.Refused(ev, why)
			}
			return ruleset.Ban{}, false
		}
	}
	r := d.history[ev.Addr]
	if r == nil {
		r = &Record{}
		d.history[ev.Addr] = r
	}
	dur := d.BanTime(r.Count)
	r.Count++
	r.LastBan, r.Until = now, now.Add(dur)
	r.Reason = reasonFor(ev.Kind)
	return ruleset.Ban{Addr: ev.Addr, Timeout: dur, Reason: r.Reason}, true
}

// BanTime is the length of an address's next ban after prior bans:
// bantime × factor^prior, at most bantime-max.
func (d *Detector) BanTime(prior int) time.Duration {
	max := d.cfg.BanTimeMax
	if max < d.cfg.BanTime {
		max = d.cfg.BanTime
	}
	// A negative count (a damaged state file) is none: never shorter than
	// bantime.
	if prior < 0 {
		prior = 0
	}
	f := float64(d.cfg.BanTime) * math.Pow(d.cfg.BanTimeFactor, float64(prior))
	if f >= float64(max) || math.IsInf(f, 0) || math.IsNaN(f) {
		return max
	}
	return time.Duration(f)
}

// sweep forgets failures older than findtime, so memory follows the
// attackers of the last findtime, not of all time.
func (d *Detector) sweep(now time.Time) {
	cutoff := now.Add(-d.cfg.FindTime)
	for a, list := range d.fails {
		if len(list) == 0 || !list[len(list)-1].at.After(cutoff) {
			delete(d.fails, a)
		}
	}
}

// Tracked is how many addresses have recent failures.
func (d *Detector) Tracked() int { return len(d.fails) }

// reasons are shared strings, one per kind: a history of 100k bans holds
// no reason text of its own.
var reasons = map[Kind]string{}

func init() {
	for _, k := range []Kind{FailedPassword, FailedPublickey, FailedKbdInt, FailedOther, InvalidUser, NotAllowed, RootRefused,
		FailedHostbased, FailedNone, FailedGSSAPI, ClientAuthFail,
		PAMFailure, MaxAuthAttempts, TooManyFailures, Negotiation, PreauthDisconnect, BadProtocol, NoIdentification, LoginTimeout, Penalty} {
		reasons[k] = "guard: maxretry reached, last " + string(k)
	}
}

func reasonFor(k Kind) string {
	if r, ok := reasons[k]; ok {
		return r
	}
	return "guard: maxretry reached"
}
