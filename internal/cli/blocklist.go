package cli

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/moat-fw/moat/internal/blocklist"
	"github.com/moat-fw/moat/internal/engine"
	"github.com/moat-fw/moat/internal/gctune"
	"github.com/moat-fw/moat/internal/policy"
	"github.com/moat-fw/moat/internal/ruleset"
	"github.com/moat-fw/moat/internal/safeapply"
	"github.com/moat-fw/moat/internal/statedir"
	"github.com/moat-fw/moat/internal/termtext"
)

const blocklistLong = `Blocklists are lists of networks whose packets moat drops before anything
else looks at them (before conntrack, so they never create state), named in
the policy:

  blocklist drop url https://www.spamhaus.org/drop/drop.txt refresh 12h
  blocklist fh1 url https://iplists.firehol.org/files/firehol_level1.netset
  blocklist cn file /etc/moat/lists/cn.zone

A list holds one address, CIDR or range (192.0.2.1-192.0.2.9) a line, IPv4
and IPv6, with '#' or ';' comments: Spamhaus DROP/EDROP (text or JSON),
FireHOL .netset and ipdeny .zone files read as they are. Overlaps are
merged. A line moat cannot read refuses the whole list (FILE:LINE says
where) and the last good copy stays in force. A list that covers your live
SSH session, or more than half of the IPv4 or IPv6 address space, is
refused with the reason. The allowlist ('allowlist CIDR...') wins over
every list, and loopback is never blocked.

url lists are fetched over HTTPS only by 'moat blocklist update' (never by
an apply, which uses the last good copy in the state directory), with
conditional requests (ETag, If-Modified-Since), a 64 MB cap and a timeout.
'moat enable' installs moat-blocklist.timer, which runs
'moat blocklist update --due' every hour; a list is fetched when its
refresh (default 24h) has passed. When moat is active the new contents are
swapped in at once (nftables: element adds and deletes in one
transaction, or the set refilled in it when many networks went away;
iptables: the ipset changed in place, the adds before the deletes, with
moat's record marked "changing" until it is done, so a command cut half
way is reported and repaired; a change the set cannot hold is loaded
whole as a new set and the rules switched to it).`

func (a *app) blocklistCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "blocklist",
		Short: "Fetch and list the policy's blocklists",
		Long:  blocklistLong,
		Example: `  moat blocklist update            # fetch every list now, swap in what changed
  moat blocklist update drop       # one list
  moat blocklist list              # entries, source, last update, age`,
		GroupID: "guard",
	}
	cmd.AddCommand(a.blocklistUpdateCommand(), a.blocklistListCommand())
	return cmd
}

// blocklistInfo is one list as 'blocklist list' and 'status' show it.
type blocklistInfo struct {
	Name      string    `json:"name"`
	Source    string    `json:"source"`
	Where     string    `json:"where"`
	Networks  int       `json:"networks"`
	IPv4      int       `json:"ipv4"`
	IPv6      int       `json:"ipv6"`
	Updated   time.Time `json:"updated,omitempty"`
	Checked   time.Time `json:"checked,omitempty"`
	AgeSecs   int64     `json:"age_seconds"`
	Refresh   string    `json:"refresh,omitempty"`
	LastError string    `json:"last_error,omitempty"`
}

// blocklistStatus describes the policy's lists from their saved copies.
func blocklistStatus(p *policy.Policy, stateDir string, now time.Time) []blocklistInfo {
	out := []blocklistInfo{}
	for _, bl := range p.Blocklists {
		m, err := blocklist.ReadMeta(stateDir, bl.Name)
		info := blocklistInfo{Name: bl.Name, Source: string(bl.Source), Where: bl.Where()}
		if bl.Source == policy.BlocklistURL {
			info.Refresh = bl.Refresh.String()
		}
		switch {
		case err != nil:
			info.LastError = err.Error()
		case m.Where == bl.Where() && m.SHA256 == "" && m.Saving != "":
			// Its first save was killed before its metadata: an apply
			// loads the copy (blocklist.Load), which is in force.
			info.Networks, info.IPv4, info.IPv6 = m.Networks, m.V4, m.V6
			info.Updated, info.Checked = m.Updated, m.Checked
			info.LastError = "its first update was interrupted before its metadata was saved: 'moat blocklist update " + bl.Name + "' completes it"
		case m.Where != bl.Where() || m.SHA256 == "":
			info.LastError = "not loaded yet"
			if bl.Source == policy.BlocklistURL {
				info.LastError = "not fetched yet: run 'moat blocklist update " + bl.Name + "'"
			}
		default:
			info.Networks, info.IPv4, info.IPv6 = m.Networks, m.V4, m.V6
			info.Updated, info.Checked, info.LastError = m.Updated, m.Checked, m.LastError
			if !m.Checked.IsZero() {
				info.AgeSecs = int64(now.Sub(m.Checked).Seconds())
			}
		}
		out = append(out, info)
	}
	return out
}

// printBlocklists writes the lists as a table.
func (a *app) printBlocklists(list []blocklistInfo) {
	if len(list) == 0 {
		return
	}
	tw := tabwriter.NewWriter(a.out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "Blocklist\tNetworks\tUpdated\tChecked\tSource")
	for _, l := range list {
		updated, checked := "never", "never"
		if !l.Updated.IsZero() {
			updated = l.Updated.Local().Format("2006-01-02 15:04")
		}
		if !l.Checked.IsZero() {
			checked = ago(time.Duration(l.AgeSecs)*time.Second) + " ago"
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\n", l.Name, l.Networks, updated, checked, l.Where)
		if l.LastError != "" {
			// The server's text may be in it (a certificate's names), and
			// the record is a file: its line breaks stay escaped.
			fmt.Fprintf(tw, "  last problem:\t%s\n", termtext.Printable(l.LastError))
		}
	}
	_ = tw.Flush() // a.out errors show on the next write
}

func ago(d time.Duration) string {
	switch {
	case d < time.Minute:
		return d.Round(time.Second).String()
	case d < 48*time.Hour:
		return d.Round(time.Minute).String()
	default:
		return fmt.Sprintf("%dd", int(d/(24*time.Hour)))
	}
}

// compile is ruleset.Compile with the blocklists' contents loaded from
// their files and saved copies (nothing is written), so that show,
// explain, status and the drift checks see what an apply loads. Problems
// (a list never fetched, a broken file) are warned about once.
func (a *app) compile(p *policy.Policy) *ruleset.Ruleset {
	if p != nil {
		if err := blocklist.Fill(a.stateDir, p, blocklist.Protect{}, time.Now(), false, a.warnOnce); err != nil {
			a.warnOnce(err.Error())
		}
	}
	return ruleset.Compile(p)
}

// warnOnce prints a warning once per command.
func (a *app) warnOnce(msg string) {
	if a.warned == nil {
		a.warned = map[string]bool{}
	}
	if !a.warned[msg] {
		a.warned[msg] = true
		fmt.Fprintf(a.errOut, "moat: warning: %s\n", msg)
	}
}

// compileApplied compiles the policy moat applied with the blocklists it
// loaded (their saved copies, file lists too: the file may have been
// edited since), for comparisons with the kernel.
func (a *app) compileApplied(p *policy.Policy) *ruleset.Ruleset {
	a.fillApplied(p)
	return ruleset.Compile(p)
}

// compileAppliedEarlier is compileApplied in the order of a moat that did
// not sink the built-ins (ruleset.CompileEarlierOrder): what the kernel
// holds after an upgrade from it, until the first apply.
func (a *app) compileAppliedEarlier(p *policy.Policy) *ruleset.Ruleset {
	a.fillApplied(p)
	return ruleset.CompileEarlierOrder(p)
}

// fillApplied fills p's blocklists with what moat loaded: the lists this
// command's update loaded, then the saved copies.
func (a *app) fillApplied(p *policy.Policy) {
	if p == nil {
		return
	}
	for i := range p.Blocklists {
		if l, ok := a.refreshed[p.Blocklists[i].Name]; ok && p.Blocklists[i].Prefixes == nil {
			p.Blocklists[i].Prefixes = l
		}
	}
	if err := blocklist.FillLoaded(a.stateDir, p, blocklist.Protect{}, time.Now(), a.warnOnce); err != nil {
		a.warnOnce(err.Error())
	}
}

// killedUpdateApplied is the applied policy text with the file lists that
// an update killed half way named in its marker (updatingMarker) as their
// files hold them, the other lists as fillApplied fills them: the update
// may have been killed after the kernel took those lists and before their
// copies were saved, so the kernel holding the file's networks is no hand
// change. nil when no killed update names a file list.
func (a *app) killedUpdateApplied(text string) *policy.Policy {
	data, err := statedir.ReadFile(a.stateDir, updatingMarker)
	if err != nil {
		return nil
	}
	named := strings.Fields(string(data))
	p, err := a.parseApplied(text)
	if err != nil {
		return nil
	}
	only := &policy.Policy{}
	for _, bl := range p.Blocklists {
		if bl.Source == policy.BlocklistFile && bl.Prefixes == nil && slices.Contains(named, bl.Name) {
			only.Blocklists = append(only.Blocklists, bl)
		}
	}
	if len(only.Blocklists) == 0 {
		return nil
	}
	if err := blocklist.Fill(a.stateDir, only, blocklist.Protect{}, time.Now(), false, a.warnOnce); err != nil {
		return nil
	}
	for i := range p.Blocklists {
		for _, bl := range only.Blocklists {
			if bl.Name == p.Blocklists[i].Name {
				p.Blocklists[i].Prefixes = bl.Prefixes
			}
		}
	}
	a.fillApplied(p)
	return p
}

// lockBlocklists keeps two updates (the timer's and the admin's) apart.
func (a *app) lockBlocklists() (func(), error) {
	if err := statedir.Ensure(a.stateDir); err != nil {
		return nil, err
	}
	l, err := statedir.WaitLock(a.stateDir, blocklist.LockFile, func(pid int) {
		fmt.Fprintf(a.errOut, "moat: waiting for another blocklist update (PID %d)\n", pid)
	})
	if err != nil {
		return nil, err
	}
	return l.Unlock, nil
}

// repairFirst takes moat's state lock, which repairs what an interrupted
// command left (Engine.Lock), and lets it go.
func (a *app) repairFirst(cmd *cobra.Command) error {
	unlock, err := a.engine().Lock(cmd.Context(), a.commandLine(cmd))
	if err != nil {
		return err
	}
	unlock()
	return nil
}

// updatingMarker is in the state directory while an update changes the
// kernel and saves its lists' copies.
const updatingMarker = blocklist.UpdatingMarker

var errFailClosed = errors.New("moat runs the fail-closed ruleset: the new copies are kept for the next 'moat enable'")

type updateJSON struct {
	Name     string `json:"name"`
	Outcome  string `json:"outcome"` // updated, unchanged, failed, skipped
	Networks int    `json:"networks"`
	Added    int    `json:"added"`
	Removed  int    `json:"removed"`
	Message  string `json:"message,omitempty"`
}

func (a *app) blocklistUpdateCommand() *cobra.Command {
	var due bool
	var timeout time.Duration
	var maxSize int64
	cmd := &cobra.Command{
		Use:   "update [NAME]",
		Short: "Fetch the url lists (or re-read the file lists) and swap in what changed",
		Long: `Fetch each url blocklist of the policy (or only NAME) over HTTPS, re-read each
file list, check them, keep the good ones as the last good copy in the state
directory and, when moat is active, swap the new contents into the kernel
(only what changed: 'moat blocklist --help' says how). A failed or malformed
fetch, or a refused list, keeps the old copy and says why (exit code 1).

--json prints an array of {name, outcome ("updated", "unchanged",
"skipped" or "failed"), networks, added, removed, message}.`,
		Example: `  moat blocklist update
  moat blocklist update drop
  moat blocklist update --due      # only lists whose refresh has passed (the timer)`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if maxSize < 1 || maxSize > blocklist.MaxFileSize {
				return fmt.Errorf("--max-size %d: expected 1 to %d bytes", maxSize, blocklist.MaxFileSize)
			}
			f := &blocklist.Fetcher{Timeout: timeout, MaxBytes: maxSize, UserAgent: "moat/" + Version}
			return a.blocklistUpdate(cmd, args, due, f)
		},
	}
	cmd.Flags().BoolVar(&due, "due", false, "only the lists whose refresh interval has passed since they were last checked")
	cmd.Flags().DurationVar(&timeout, "timeout", blocklist.DefaultTimeout, "give up on a download after this long")
	cmd.Flags().Int64Var(&maxSize, "max-size", blocklist.MaxFileSize, "refuse a download larger than this many bytes")
	return cmd
}

func (a *app) blocklistUpdate(cmd *cobra.Command, args []string, due bool, f *blocklist.Fetcher) error {
	ctx := cmd.Context()
	// A short command, as an edit (gctune): an update of a 100,000-network
	// list allocates about 35 MB in a few large slices and lives a tenth
	// of a second. Collecting as the heap doubled (GOGC 200) cost two
	// collections, 10 to 12 ms of its 110 to 120 ms of CPU, and no RSS:
	// the peak is 47 MB either way (docs/benchmarks.md).
	defer gctune.Short(editHeap)()
	// Taken before the applied policy is read: an update waiting for
	// another would otherwise read the record that one replaces, and be
	// refused as read before an apply (its file lists).
	unlock, err := a.lockBlocklists()
	if err != nil {
		return err
	}
	defer unlock()
	// The marker is written under that lock alone: what a killed update
	// left of its write goes now (moat's repair leaves it while an
	// update runs).
	if err := blocklist.RemoveMarkerTemps(a.stateDir); err != nil {
		a.log.Warn("files left by an interrupted blocklist update", "err", err)
	}
	// A command interrupted half way (its journal) or a change whose
	// rollback is due is repaired before the applied record and the lists
	// are read: the repair restores (or rolls back) the applied record,
	// and Refresh, finding it changed since this read, would take this
	// command's own repair for another apply and refuse the file lists
	// (TestBlocklistUpdateAfterKilledApply).
	if engine.NeedsRepair(a.stateDir) {
		if err := a.repairFirst(cmd); err != nil {
			return err
		}
	}
	doc, err := a.loadDocument()
	if err != nil {
		return err
	}
	// The rules in force are what was applied last, not edits not yet
	// applied: an update must not sneak them in.
	var pre *engine.Parsed
	var p *policy.Policy
	if applied, err := engine.LoadApplied(a.stateDir); err == nil && applied != nil && !applied.FailClosed {
		// Parsed once: the refresh below loads this parse if the same
		// text is still what is applied once it holds the lock.
		d := policy.NewDocument(applied.Source, []byte(applied.Policy))
		d.Apps = a.apps()
		if p, err = d.Policy(a.services()); err != nil {
			return err
		}
		pre = &engine.Parsed{Source: applied.Source, Text: applied.Policy, Policy: p, Applied: applied.Time}
	} else {
		if p, err = a.parseApplied(string(doc.Bytes())); err != nil {
			return err
		}
		// Only to check, under the lock, that the lists come from the
		// sources the policy applied by then names.
		pre = &engine.Parsed{Policy: p, FromFile: true}
	}
	var todo []*policy.Blocklist
	for i := range p.Blocklists {
		if len(args) == 0 || p.Blocklists[i].Name == args[0] {
			todo = append(todo, &p.Blocklists[i])
		}
	}
	if len(args) == 1 && len(todo) == 0 {
		// The policy file is parsed only to say why: its edits are not
		// what an update loads.
		filePolicy, err := doc.Policy(a.services())
		if err != nil {
			return err
		}
		if _, ok := filePolicy.Blocklist(args[0]); ok {
			return fmt.Errorf("blocklist %s is in %s but not applied yet: run 'moat reload' (or 'moat enable') first", args[0], a.config)
		}
		return fmt.Errorf("no blocklist %s in %s", args[0], a.config)
	}
	if len(todo) == 0 {
		a.printf("No blocklists in %s\n", a.config)
		return nil
	}
	now := time.Now()
	var sessions []netip.Addr
	if st, err := a.findSSH()(); err == nil { // the scan the engine's lockout check uses too
		for _, s := range st.Sessions {
			sessions = append(sessions, s.Client.Addr().Unmap())
		}
	}
	var results []*blocklist.Result
	prefixes := map[string][]netip.Prefix{} // each result's networks, made once
	report := map[string]*updateJSON{}
	var order []string
	failed := 0
	for _, bl := range todo {
		rep := &updateJSON{Name: bl.Name}
		report[bl.Name], order = rep, append(order, bl.Name)
		if due && bl.Source == policy.BlocklistURL {
			if m, err := blocklist.ReadMeta(a.stateDir, bl.Name); err == nil && m.Where == bl.Where() && m.SHA256 != "" && now.Sub(m.Checked) < bl.Refresh {
				rep.Outcome, rep.Networks = "skipped", m.Networks
				rep.Message = fmt.Sprintf("checked %s ago; refresh %s", ago(now.Sub(m.Checked)), bl.Refresh)
				continue
			}
		}
		r, err := blocklist.Update(ctx, a.stateDir, bl, f, blocklist.Protect{Sessions: sessions}, now)
		if err != nil {
			rep.Outcome, rep.Message = "failed", err.Error()
			failed++
			continue
		}
		results = append(results, r)
		rep.Networks, rep.Added, rep.Removed = len(r.New.V4)+len(r.New.V6), len(r.Add), len(r.Del)
		rep.Outcome = "updated"
		if r.NotModified {
			rep.Outcome = "unchanged"
		}
		bl.Prefixes = r.New.Prefixes()
		prefixes[r.Name] = bl.Prefixes
	}

	changed := false
	for _, r := range results {
		changed = changed || !r.NotModified
	}
	// An update killed after the kernel took its lists but before their
	// saved copies were written left the kernel holding lists that no
	// saved copy says: compared with the saved copies alone, a source
	// back at the old contents looks unchanged and would never be loaded.
	// The marker, written before the kernel changes and removed once the
	// copies are saved, makes the next update load its lists whatever
	// the comparison says (TestBlocklistUpdateKilledBeforeSave). It is
	// written without disk flushes (two, 8 to 30 ms of the command's wall
	// time under load): it speaks of what the kernel holds, which a power
	// failure empties as it may lose the marker (the boot's restore then
	// loads the saved copies, which is what they say); and a marker a
	// power failure left empty or old only makes an update load its lists
	// again, or accept in the drift check what such an update would have
	// loaded, as a durable one left by a crash during the update does.
	_, err = os.Lstat(filepath.Join(a.stateDir, updatingMarker))
	changed = changed || err == nil && len(results) > 0
	applied, inactive := "", false
	if changed {
		if err := statedir.WriteCache(a.stateDir, updatingMarker, []byte(strings.Join(order, "\n")+"\n")); err != nil {
			return fmt.Errorf("blocklist update: %w", err)
		}
		lists := map[string][]netip.Prefix{}
		for _, r := range results {
			lists[r.Name] = prefixes[r.Name]
		}
		start := time.Now()
		err := a.locked(cmd, func(ctx context.Context, eng *engine.Engine) error {
			// Both locks held: what a killed update left beside the
			// copies goes (the lock's repair leaves it to this update).
			if err := blocklist.RemoveLeftTemps(a.stateDir); err != nil {
				a.log.Warn("files left by an interrupted blocklist update", "err", err)
			}
			// A url list's first copy is saved before the kernel takes
			// it (vouched for as 'saving'): killed after the kernel
			// batch, the update left no copy and the next apply dropped
			// the list. Under moat's lock: no apply reads it before the
			// kernel change, or after a refused one until it is undone.
			var undos []func() error
			undo := func() error {
				var errs []error
				for _, u := range undos {
					errs = append(errs, u())
				}
				return errors.Join(errs...)
			}
			for _, r := range results {
				u, err := blocklist.SaveFirstBefore(a.stateDir, r)
				if err != nil {
					return errors.Join(err, undo())
				}
				undos = append(undos, u)
			}
			res, err := eng.Refresh(ctx, a.change(cmd), lists, pre)
			if err != nil {
				// The kernel is as it was: so are the copies.
				if uerr := undo(); uerr != nil {
					a.log.Warn("blocklist update: the first copies saved before the kernel change", "err", uerr)
				}
				return err
			}
			switch {
			case res.Inactive:
				inactive = true
			case res.FailClosed != nil:
				return errFailClosed
			default:
				// Their copies are saved after the lock: until then the
				// kernel holds what no copy says (the drift check after
				// the restores compares with these).
				a.refreshed = lists
				applied = fmt.Sprintf("swapped into the kernel (%s) in %s", res.Applied.Backend, time.Since(start).Round(time.Millisecond))
			}
			return nil
		})
		if err != nil && !errors.Is(err, errFailClosed) {
			// The kernel is as it was; so are the saved copies.
			for _, r := range results {
				if !r.NotModified {
					report[r.Name].Outcome, report[r.Name].Message = "failed", "not loaded: "+err.Error()
				}
			}
			a.printUpdate(order, report)
			return fmt.Errorf("blocklist update: the new lists were not loaded, the old ones stay: %w", err)
		}
		if err != nil {
			fmt.Fprintf(a.errOut, "moat: %v\n", err)
		}
	}
	for _, r := range results {
		if err := blocklist.SaveResult(a.stateDir, r); err != nil {
			return err
		}
	}
	if changed {
		if err := statedir.Remove(a.stateDir, updatingMarker); err != nil {
			return fmt.Errorf("blocklist update: %w", err)
		}
	}
	a.printUpdate(order, report)
	switch {
	case applied != "":
		if !a.json {
			a.printf("Changes %s\n", applied)
		}
	case changed && inactive:
		if !a.json {
			a.printf("moat is not active: the new copies are used at the next 'moat enable'\n")
		}
	}
	if failed > 0 {
		return fmt.Errorf("%d of %d blocklists not updated (their last good copies stay in force)", failed, len(todo))
	}
	return nil
}

func (a *app) printUpdate(order []string, report map[string]*updateJSON) {
	if a.json {
		list := make([]*updateJSON, 0, len(order))
		for _, n := range order {
			list = append(list, report[n])
		}
		_ = a.printJSON(list)
		return
	}
	for _, n := range order {
		r := report[n]
		switch r.Outcome {
		case "updated":
			a.printf("%s: %d networks (+%d -%d)\n", n, r.Networks, r.Added, r.Removed)
		case "unchanged":
			a.printf("%s: unchanged, %d networks\n", n, r.Networks)
		case "skipped":
			a.printf("%s: not due (%s)\n", n, r.Message)
		default:
			fmt.Fprintf(a.errOut, "moat: %s: %s\n", n, r.Message)
		}
	}
}

func (a *app) blocklistListCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "list",
		Short: "Show each blocklist: networks, source, last update and age",
		Long: `Show each blocklist of the policy: its networks (IPv4 and IPv6), where
it comes from, the last update and its age, and the last error.

--json prints an array of {name, source ("url" or "file"), where (the URL
or path), networks, ipv4, ipv6, updated, checked, age_seconds, refresh,
last_error}; a field that is empty may be left out.`,
		Example: `  moat blocklist list
  moat blocklist list --json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			p, err := a.loadPolicy()
			if err != nil {
				return err
			}
			list := blocklistStatus(p, a.stateDir, time.Now())
			if a.json {
				return a.printJSON(list)
			}
			if len(list) == 0 {
				a.printf("No blocklists in %s\n", a.config)
				return nil
			}
			a.printBlocklists(list)
			return nil
		},
	}
}

// installBlocklistTimer installs moat-blocklist.timer where systemd runs
// the host, when the policy has url lists (and removes it when it has
// none).
func (a *app) installBlocklistTimer(ctx context.Context, p *policy.Policy) {
	sd := safeapply.HostSystemd
	if p == nil || !safeapply.InHostNamespace() || !sd.Running() {
		return
	}
	hasURL := false
	for _, bl := range p.Blocklists {
		hasURL = hasURL || bl.Source == policy.BlocklistURL
	}
	if !hasURL {
		if err := a.removeBlocklistTimer(ctx); err != nil {
			fmt.Fprintf(a.errOut, "moat: warning: %v\n", err)
		}
		return
	}
	self, err := os.Executable()
	if err != nil {
		fmt.Fprintf(a.errOut, "moat: warning: blocklist timer: %v\n", err)
		return
	}
	for _, u := range safeapply.BlocklistUnits {
		if err := sd.Install(ctx, u, self); err != nil {
			fmt.Fprintf(a.errOut, "moat: warning: the blocklist timer failed: %v\n", err)
			return
		}
	}
	a.printf("Blocklist updates scheduled (moat-blocklist.timer)\n")
}

func (a *app) removeBlocklistTimer(ctx context.Context) error {
	sd := safeapply.HostSystemd
	if !safeapply.InHostNamespace() || !sd.Running() {
		return nil
	}
	var errs []error
	for i := len(safeapply.BlocklistUnits) - 1; i >= 0; i-- {
		errs = append(errs, sd.Uninstall(ctx, safeapply.BlocklistUnits[i]))
	}
	return errors.Join(errs...)
}
