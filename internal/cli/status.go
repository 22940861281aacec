package cli

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/moat-fw/moat/internal/engine"
	"github.com/moat-fw/moat/internal/foreign"
	"github.com/moat-fw/moat/internal/guard"
	"github.com/moat-fw/moat/internal/policy"
	"github.com/moat-fw/moat/internal/ruleset"
	"github.com/moat-fw/moat/internal/safeapply"
)

type statusRule struct {
	Number int `json:"number"`
	Line   int `json:"line"`
	policy.RuleJSON
	Text      string `json:"text"`
	CounterID string `json:"counter_id"`
	Packets   uint64 `json:"packets"`
	Bytes     uint64 `json:"bytes"`
	// Applied: the kernel has this rule; InFile: moat.conf has it. A rule
	// of the file that is not applied is listed, marked "not applied".
	Applied bool `json:"applied"`
	InFile  bool `json:"in_file"`
}

type statusBuiltin struct {
	Chain   ruleset.Hook `json:"chain"`
	ID      string       `json:"id"`
	Text    string       `json:"text"`
	Packets uint64       `json:"packets"`
	Bytes   uint64       `json:"bytes"`
	// NotCounted: the rule has no counter (ruleset.Rule.Uncounted).
	NotCounted bool `json:"not_counted,omitempty"`
}

type statusDefault struct {
	Policy policy.Action `json:"policy"`
	// Disabled: moat leaves this traffic alone (routed traffic while the
	// policy has no route rule and no routed default), as ufw's
	// "disabled (routed)".
	Disabled bool   `json:"disabled,omitempty"`
	Line     int    `json:"line,omitempty"`
	Packets  uint64 `json:"packets"`
	Bytes    uint64 `json:"bytes"`
}

type statusPending struct {
	Applied     time.Time `json:"applied"`
	Deadline    time.Time `json:"deadline"`
	SecondsLeft int       `json:"seconds_left"`
	// WatchdogPID is the process that rolls the change back at the
	// deadline; WatchdogRunning false: it is gone (killed), and nothing
	// rolls the change back until the next moat command.
	WatchdogPID     int  `json:"watchdog_pid,omitempty"`
	WatchdogRunning bool `json:"watchdog_running"`
	// WatchdogStopped: it is there but stopped (SIGSTOP): the rollback
	// waits until it is continued or the next moat command runs.
	WatchdogStopped bool `json:"watchdog_stopped,omitempty"`
	// rollingBack: a rollback began (it runs, or was killed part way).
	rollingBack bool
}

type statusReport struct {
	Status     string `json:"status"`
	Persistent bool   `json:"persistent"`
	// Guard is true only while a guard process really runs (it holds its
	// lock in the state directory); GuardConfigured is 'guard sshd'.
	Guard           bool           `json:"guard"`
	GuardPID        int            `json:"guard_pid,omitempty"`
	GuardConfigured bool           `json:"guard_configured"`
	BansActive      int            `json:"bans_active"`
	Pending         *statusPending `json:"pending_confirmation,omitempty"`
	Backend         string         `json:"backend,omitempty"`
	Config          string         `json:"config"`
	// Logging is the kernel logging level ('moat logging'): off, low,
	// medium, high or full.
	Logging  string                   `json:"logging"`
	Defaults map[string]statusDefault `json:"defaults"`
	Rules    []statusRule             `json:"rules"`
	Builtins []statusBuiltin          `json:"builtins"`
	statusTruth
	Blocklists []blocklistInfo `json:"blocklists"`
}

func (a *app) statusCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "status [numbered|verbose]",
		Short: "Show whether moat is active and its rules (verbose: with counters)",
		Long: `Show whether moat is active and the rules the kernel applies, numbered as
in the policy file. status compares the policy file, what moat applied and
moat's table or chains in the kernel, and says what differs: changes in
the file not applied ('moat reload'), the fail-closed ruleset loaded by
'moat restore', moat's rules changed outside moat ('moat reload' repairs
them), a change a killed moat left half done. Rules only in the file are
marked "not applied". It also lists filtering outside moat (other nftables
tables, iptables rules, ufw, firewalld, Docker) that can still drop what
moat allows.

--json prints one object (a field that is empty or false may be left out):
status ("active" or "inactive"), backend, config, persistent, logging
("off", "low", ...), guard, guard_pid, guard_configured, bans_active,
pending_confirmation (applied, deadline, seconds_left, watchdog_pid,
watchdog_running, watchdog_stopped), defaults (incoming, outgoing, routed:
policy, line, disabled, packets, bytes), rules (number, line, text, action,
direction, interface_in, interface_out, proto, from, from_port, to,
to_port, family, comment, log, rate (count, seconds, burst), from_app,
to_app, counter_id, packets, bytes, applied, in_file), builtins (chain, id,
text, packets, bytes, not_counted), in_sync, file_not_applied, file_error,
applied_unknown, fail_closed (since, reason), kernel_changed, unverified,
earlier_order, other_filtering, apps_changed, interrupted (command, time,
pid, running), rules_removed, state_errors, blocklists (name, source,
where, networks, ipv4, ipv6, updated, checked, age_seconds, refresh,
last_error).`,
		Example: `  moat status
  moat status numbered      # positions for 'moat delete N' and 'moat insert N'
  moat status verbose       # defaults, built-ins, packet and byte counters
  moat status --json        # everything, for scripts`,
		GroupID:   "inspect",
		Args:      cobra.MaximumNArgs(1),
		ValidArgs: []string{"numbered", "verbose"},
		RunE: func(cmd *cobra.Command, args []string) error {
			mode := ""
			if len(args) == 1 {
				mode = args[0]
				if mode != "numbered" && mode != "verbose" {
					return fmt.Errorf("unknown status mode %q: expected numbered or verbose", mode)
				}
			}
			rep, err := a.status(cmd)
			if err != nil {
				return err
			}
			if a.json {
				return writeStatusJSON(a.out, rep)
			}
			return a.printStatus(rep, mode)
		},
	}
}

func (a *app) status(cmd *cobra.Command) (*statusReport, error) {
	ctx := cmd.Context()
	filePolicy, fileErr := a.loadPolicy()
	rep := &statusReport{Status: "inactive", Config: a.config, Defaults: map[string]statusDefault{}, Rules: []statusRule{}, Builtins: []statusBuiltin{},
		Persistent: safeapply.Enabled(a.stateDir), statusTruth: statusTruth{InSync: true}}
	if pend, err := engine.LoadPending(a.stateDir); err == nil {
		rep.Pending = &statusPending{Applied: pend.Created, Deadline: pend.Deadline, SecondsLeft: max(0, int(pend.Left().Seconds())),
			WatchdogPID: pend.Watchdog.PID, WatchdogRunning: pend.Watchdog.Alive(), WatchdogStopped: pend.Watchdog.Stopped(),
			rollingBack: pend.RollingBack()}
	} else if !errors.Is(err, engine.ErrNoPending) {
		rep.stateError(err, "a change waits for confirmation and its record is unreadable: its watchdog rolls back what it read of it at the deadline; commands that change moat's state refuse to run meanwhile ('moat disable' removes moat's rules and state whatever they are)")
	}
	b, err := a.activeBackend(ctx)
	if err != nil {
		return nil, err
	}
	if b == nil && fileErr != nil {
		// Inactive with a policy file that does not parse: say both
		// (it said only the file's error, not whether moat is active).
		rep.FileError, rep.InSync, rep.Logging, rep.Blocklists = fileErr.Error(), false, string(policy.LogOff), []blocklistInfo{}
		rep.GuardPID, rep.Guard = guard.Running(a.stateDir)
		if rep.OtherFiltering, err = a.foreignFilters(ctx); err != nil {
			return nil, err
		}
		if rep.OtherFiltering == nil {
			rep.OtherFiltering = []foreign.Finding{}
		}
		return rep, nil
	}
	rep.GuardPID, rep.Guard = guard.Running(a.stateDir)
	if rep.Interrupted = a.interrupted(&rep.statusTruth); rep.Interrupted != nil {
		rep.InSync = false
	}
	if b == nil && rep.Interrupted == nil && rep.Pending == nil {
		// 'moat disable' removes the record with the rules: a record
		// without them in the kernel is a firewall gone without moat.
		if st := a.loadApplied(); st.Known {
			t := st.Time
			rep.RulesRemoved, rep.InSync = &t, false
		}
	}
	if rep.OtherFiltering, err = a.foreignFilters(ctx); err != nil {
		return nil, err
	}
	// What the rules, defaults and counters are read from: what is applied
	// when moat is active and knows it, else the file.
	shown := filePolicy
	counters := map[string]ruleset.Counter{}
	if b != nil {
		rep.Status, rep.Backend = "active", b.Name()
		if counters, err = b.Counters(ctx); err != nil {
			return nil, err
		}
		// From the ban history ('moat ban' and the guard keep it): cheap
		// with 200,000 bans, where listing the kernel's sets is not.
		if n, err := guard.ActiveBans(a.stateDir, time.Now()); err == nil {
			rep.BansActive = n
		}
		rep.BansActive = kernelBansAtLeast(ctx, b, rep.BansActive)
		applied, err := a.compare(ctx, b, filePolicy, fileErr, rep)
		if err != nil {
			return nil, err
		}
		if applied != nil {
			shown = applied
		}
	}
	if filePolicy != nil {
		rep.GuardConfigured = filePolicy.Guard.Enabled
	}
	if shown != nil {
		rep.Blocklists = blocklistStatus(shown, a.stateDir, time.Now())
	}
	rep.Logging = string(policy.LogOff)
	if shown != nil && shown.Logging != "" {
		rep.Logging = string(shown.Logging)
	}
	if shown == nil {
		// Active, the file does not parse and what was applied is not
		// known either: no rules to show (compiling nothing panicked).
		return rep, nil
	}
	rs := a.compile(shown)
	inSet := map[int]string{}
	for _, s := range rs.Sets {
		id := "set:" + s.Name // one string per set, not per entry
		for _, e := range s.Entries {
			inSet[e.Origin.Line] = id
		}
	}
	// Rule numbers are the file's, for 'moat delete N' and 'moat insert N'.
	fileNumber := map[string]int{}
	if filePolicy != nil {
		nums := ruleNumbers(filePolicy)
		for i, r := range filePolicy.RuleSeq() {
			k := r.Key()
			if _, ok := fileNumber[k]; !ok {
				fileNumber[k] = nums[i]
			}
		}
	}
	// The file's rules the kernel lacks are looked for only when the
	// kernel's rules are not the file's: with 100,000 rules each key is a
	// string of a few hundred bytes, built once per rule and kept once.
	markMissing := b != nil && shown != filePolicy && filePolicy != nil
	var shownKeys map[string]bool
	if markMissing {
		shownKeys = make(map[string]bool, len(fileNumber))
	}
	rep.Rules = make([]statusRule, 0, shown.NumRules())
	for _, r := range shown.RuleSeq() {
		id := "L" + strconv.Itoa(r.Pos.Line)
		if s, ok := inSet[r.Pos.Line]; ok {
			id = s
		}
		c := counters[id]
		k := r.Key()
		n, inFile := fileNumber[k]
		if markMissing {
			shownKeys[k] = true
		}
		rep.Rules = append(rep.Rules, statusRule{Number: n, Line: r.Pos.Line, RuleJSON: r.JSON(), Text: r.Text,
			CounterID: id, Packets: c.Packets, Bytes: c.Bytes, Applied: b != nil && !rep.missing[id], InFile: inFile || shown == filePolicy})
	}
	if markMissing {
		// Rules of the file that the kernel does not have: shown, marked.
		nums := ruleNumbers(filePolicy)
		for i, r := range filePolicy.RuleSeq() {
			if !shownKeys[r.Key()] {
				rep.Rules = append(rep.Rules, statusRule{Number: nums[i], Line: r.Pos.Line, RuleJSON: r.JSON(), Text: r.Text, InFile: true})
			}
		}
	}
	for _, ch := range rs.Chains {
		seen := map[string]bool{}
		for _, r := range ch.Rules {
			// Built-ins, and the blocklists' drops and the scan trap (their
			// counters show what they caught).
			listed := strings.HasPrefix(r.Origin.ID, "blocklist:") || r.Origin.ID == "portscan"
			if !(strings.HasPrefix(r.Origin.ID, "builtin:") || listed) || seen[r.Origin.ID] {
				continue
			}
			seen[r.Origin.ID] = true
			c := counters[r.Origin.ID]
			b := statusBuiltin{Chain: ch.Hook, ID: r.Origin.ID, Text: r.Origin.Text, Packets: c.Packets, Bytes: c.Bytes, NotCounted: r.Uncounted}
			if r.Uncounted {
				b.Packets, b.Bytes = 0, 0
			}
			rep.Builtins = append(rep.Builtins, b)
		}
		if !ch.HasDefault() {
			continue // the chain before conntrack: no default of its own
		}
		c := counters[ch.DefaultOrigin.ID]
		dir := map[ruleset.Hook]policy.Direction{ruleset.Input: policy.In, ruleset.Output: policy.Out, ruleset.Forward: policy.Route}[ch.Hook]
		rep.Defaults[policy.DirectionWord(dir)] = statusDefault{Policy: shown.Defaults[dir], Line: ch.DefaultOrigin.Line, Packets: c.Packets, Bytes: c.Bytes,
			Disabled: ch.Hook == ruleset.Forward && len(ch.Rules) == 0 && ch.DefaultOrigin.Line == 0}
	}
	return rep, nil
}

func (a *app) printStatus(rep *statusReport, mode string) error {
	a.printf("Status: %s\n", rep.Status)
	a.printTruth(rep)
	a.printForeign(rep)
	if rep.Pending != nil {
		a.printf("Pending: the change applied at %s rolls back in %s (at %s) unless 'moat confirm' is run\n",
			rep.Pending.Applied.Format(time.TimeOnly), time.Duration(rep.Pending.SecondsLeft)*time.Second,
			deadlineText(rep.Pending.Deadline, time.Now()))
		if rep.Pending.WatchdogPID > 0 && !rep.Pending.WatchdogRunning {
			a.printf("WARNING: its rollback watchdog (PID %d) is gone: nothing rolls it back until the next moat command that changes state\n"+
				"  (which starts a new watchdog, or rolls it back if the deadline passed); 'moat rollback' now, or 'moat confirm'\n", rep.Pending.WatchdogPID)
		}
		if rep.Pending.WatchdogStopped {
			a.printf("WARNING: its rollback watchdog (PID %d) is STOPPED (SIGSTOP): it rolls nothing back until 'kill -CONT %d';\n"+
				"  the next moat command that changes state rolls the change back if the deadline passed\n", rep.Pending.WatchdogPID, rep.Pending.WatchdogPID)
		}
	}
	if rep.Status != "active" && (mode != "verbose" || rep.FileError != "") {
		return nil
	}
	if rep.Status == "active" && rep.FileError != "" && rep.AppliedUnknown {
		// Neither the file nor a record of what was applied: the
		// rules, defaults and logging in the kernel are not known
		// (verbose printed empty defaults and an empty table).
		a.printf("What moat applied is not known (not recorded, or with profiles gone) and %s does not parse: fix it, then 'moat reload'\n", rep.Config)
		return nil
	}
	verbose := mode == "verbose"
	// Counters exist only in the kernel: inactive, verbose shows the
	// file's policy without them (they read 0 packets, as if the rules
	// were there and matched nothing).
	counted := verbose && rep.Status == "active"
	if verbose {
		if rep.Backend != "" {
			a.printf("Backend: %s\n", rep.Backend)
		}
		a.printf("Policy: %s\n", rep.Config)
		persist := "no ('moat enable' saves it for boot)"
		if rep.Persistent {
			persist = "yes (saved in " + a.stateDir + ")"
		}
		a.printf("Persistent: %s\n", persist)
		a.printf("Guard: %s; %s ('moat bans' lists them)\n", guardState(rep), count(rep.BansActive, "active ban"))
		a.printf("Logging: %s\n", loggingWord(rep.Logging))
		a.printf("Default: %s (incoming), %s (outgoing), %s (routed)\n",
			defaultWord(rep.Defaults["incoming"]), defaultWord(rep.Defaults["outgoing"]), defaultWord(rep.Defaults["routed"]))
	}
	a.printBlocklists(rep.Blocklists)
	if len(rep.Rules) == 0 && !verbose {
		return nil
	}
	a.printf("\n")
	if verbose && !counted {
		a.printf("Rules of %s, none applied (moat is inactive: 'moat enable' applies them):\n", rep.Config)
	}
	tw := newTable(a.out, 2, 8, 2)
	head := "To\tAction\tFrom"
	if mode == "numbered" {
		head = "     " + head
	}
	if counted {
		head += "\tPackets\tBytes"
	}
	fmt.Fprintln(tw, head+"\t")
	fmt.Fprintln(tw, strings.NewReplacer("To", "--", "Action", "------", "From", "----", "Packets", "-------", "Bytes", "-----").Replace(head)+"\t")
	prev := ""
	for _, r := range rep.Rules {
		row := fmt.Sprintf("%s\t%s\t%s", toColumn(r.RuleJSON, verbose), actionColumn(r.RuleJSON), fromColumn(r.RuleJSON, verbose))
		if !verbose {
			// An application profile with ports of several protocols
			// is one line of the policy and one kernel rule per
			// protocol: named by the profile, as ufw, it is one row.
			key := fmt.Sprintf("%d\x00%d\x00%s\x00%s", r.Number, r.Line, row, ruleMark(rep, r))
			if (r.ToApp != "" || r.FromApp != "") && key == prev {
				continue
			}
			prev = key
		}
		if mode == "numbered" {
			if r.Number > 0 {
				row = fmt.Sprintf("[%2d] %s", r.Number, row)
			} else {
				row = "[--] " + row
			}
		}
		if counted {
			mark := ""
			if strings.HasPrefix(r.CounterID, "set:") {
				mark = "*"
			}
			row += fmt.Sprintf("\t%d%s\t%d%s", r.Packets, mark, r.Bytes, mark)
		}
		tail := []string{}
		if m := ruleMark(rep, r); m != "" {
			tail = append(tail, m)
		}
		if r.Comment != "" {
			tail = append(tail, "# "+r.Comment)
		}
		row += "\t" + strings.Join(tail, " ")
		fmt.Fprintln(tw, row)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if !verbose {
		return nil
	}
	for _, r := range rep.Rules {
		if strings.HasPrefix(r.CounterID, "set:") {
			a.printf("* address rules next to each other share one set and one counter\n")
			break
		}
	}
	a.printf("\nDefaults:\n")
	tw = newTable(a.out, 2, 8, 2)
	for _, d := range []string{"incoming", "outgoing", "routed"} {
		def := rep.Defaults[d]
		where := "built-in"
		if def.Line > 0 {
			where = fmt.Sprintf("line %d", def.Line)
		}
		if def.Disabled {
			fmt.Fprintf(tw, "  DISABLED %s\t(no route rule or routed default: moat leaves it to the kernel and other tools)\t\t\n", d)
			continue
		}
		if !counted {
			fmt.Fprintf(tw, "  %s %s\t(%s)\t\n", strings.ToUpper(string(def.Policy)), d, where)
			continue
		}
		fmt.Fprintf(tw, "  %s %s\t(%s)\t%s\t%s\n", strings.ToUpper(string(def.Policy)), d, where, count(int(def.Packets), "packet"), count(int(def.Bytes), "byte"))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	a.printf("\nBuilt-in rules (see 'moat show'):\n")
	tw = newTable(a.out, 2, 8, 2)
	for _, b := range rep.Builtins {
		if b.NotCounted || !counted {
			what := "(not counted)"
			if !counted {
				what = ""
			}
			fmt.Fprintf(tw, "  %s\t%s\t%s\t\n", b.Chain, b.Text, what)
			continue
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\n", b.Chain, b.Text, count(int(b.Packets), "packet"), count(int(b.Bytes), "byte"))
	}
	return tw.Flush()
}

// table is a text/tabwriter.Writer writing through a buffer: tabwriter
// writes each cell and its padding apart (eight writes a rule, 800,000
// at 100k rules, each a write(2) and a pass through termtext.Writer).
type table struct {
	*tabwriter.Writer
	buf *bufio.Writer
}

// newTable is tabwriter.NewWriter(w, minwidth, tabwidth, padding, ' ', 0)
// through a buffer; its Flush writes out both.
func newTable(w io.Writer, minwidth, tabwidth, padding int) table {
	buf := bufio.NewWriterSize(w, 64<<10)
	return table{tabwriter.NewWriter(buf, minwidth, tabwidth, padding, ' ', 0), buf}
}

func (t table) Flush() error {
	if err := t.Writer.Flush(); err != nil {
		return err
	}
	return t.buf.Flush()
}

// guardState says whether the guard really runs, not only whether the
// policy turns it on.
func guardState(rep *statusReport) string {
	switch {
	case rep.Guard && rep.GuardConfigured:
		return fmt.Sprintf("on (pid %d)", rep.GuardPID)
	case rep.Guard:
		return fmt.Sprintf("running (pid %d), but the policy has no 'guard sshd' any more", rep.GuardPID)
	case rep.GuardConfigured:
		return "NOT RUNNING although the policy has 'guard sshd' (start moat-guard.service, or 'moat guard')"
	}
	return "off (add 'guard sshd')"
}

// loggingWord is a logging level as ufw prints it: "on (low)", "off".
func loggingWord(level string) string {
	if level == "" || level == string(policy.LogOff) {
		return "off"
	}
	return "on (" + level + ")"
}

// defaultWord is a default as ufw prints it: "deny", "disabled".
func defaultWord(d statusDefault) string {
	if d.Disabled {
		return "disabled"
	}
	return string(d.Policy)
}

func actionColumn(r policy.RuleJSON) string {
	dir := map[policy.Direction]string{policy.In: "IN", policy.Out: "OUT", policy.Route: "FWD"}[r.Direction]
	s := strings.ToUpper(string(r.Action)) + " " + dir
	if r.Log != "" {
		s += " (" + string(r.Log) + ")"
	}
	if r.Rate != nil && *r.Rate != policy.DefaultLimit {
		s += fmt.Sprintf(" %d/%ds", r.Rate.Count, r.Rate.Seconds)
	}
	return s
}

// endpoint writes one side of a rule as ufw does: "22/tcp", "192.0.2.1
// 80/tcp", "Anywhere", "Anywhere (v6)", "... on eth0". A side whose ports
// come from an application profile is named by it as ufw names it: the
// profile alone ("OpenSSH"), or with verbose its ports too ("22/tcp
// (OpenSSH)"). As ufw, an IPv6 rule's side says "(v6)" when it is
// Anywhere, or when it has ports and neither side an address (so that it
// does not read as the IPv4 rule's twin).
func endpoint(addr, port, proto string, fam policy.Family, iface string, showProto bool, app string, verbose, bothAny bool) string {
	s := "Anywhere"
	if addr != "any" {
		if p, err := netip.ParsePrefix(addr); err == nil && p.IsSingleIP() {
			addr = p.Addr().String()
		}
		s = addr
	}
	ports := ""
	if port != "any" {
		ports = port
		if proto != "any" {
			ports += "/" + proto
		}
	}
	if app != "" {
		if verbose && ports != "" {
			ports += " (" + app + ")"
		} else {
			ports = app
		}
	}
	switch {
	case ports != "" && addr == "any":
		s = ports
	case ports != "":
		s += " " + ports
	case showProto && proto != "any":
		s += "/" + proto
	}
	if fam == policy.FamilyV6 && ((ports == "" && addr == "any") || (ports != "" && bothAny)) {
		s += " (v6)"
	}
	if iface != "" {
		s += " on " + iface
	}
	return s
}

func toColumn(r policy.RuleJSON, verbose bool) string {
	iface := r.InterfaceIn
	if r.Direction == policy.Out {
		iface = r.InterfaceOut
	}
	if r.Direction == policy.Route {
		iface = r.InterfaceOut
	}
	return endpoint(r.To, r.ToPort, r.Proto, r.Family, iface, r.FromPort == "any" && r.FromApp == "", r.ToApp, verbose, r.From == "any" && r.To == "any")
}

func fromColumn(r policy.RuleJSON, verbose bool) string {
	iface := ""
	if r.Direction == policy.Route {
		iface = r.InterfaceIn
	}
	return endpoint(r.From, r.FromPort, r.Proto, r.Family, iface, false, r.FromApp, verbose, r.From == "any" && r.To == "any")
}

// ruleNumbers are the rules' positions as 'moat delete N' counts them: one
// per line (an application profile with several protocols is one line).
func ruleNumbers(p *policy.Policy) []int {
	nums := make([]int, p.NumRules())
	num, lastLine := 0, -1
	for i, r := range p.RuleSeq() {
		if r.Pos.Line != lastLine || r.Pos.Line == 0 {
			num, lastLine = num+1, r.Pos.Line
		}
		nums[i] = num
	}
	return nums
}

// kernelBanBound bounds the kernel's bans status counts itself.
const kernelBanBound = 1000

// kernelBansAtLeast is the count of active bans: recorded (the ban
// history's), or the kernel's when it holds more (a ban the history does
// not record: the port scan trap's, one added by hand; 'moat bans' lists
// them), counted up to kernelBanBound where the backend's dump stops
// there (nftables). Above the bound the history's count stands: reading
// the kernel's sets whole costs seconds with 200,000 bans.
func kernelBansAtLeast(ctx context.Context, b any, recorded int) int {
	lb, ok := b.(interface {
		BansUpTo(ctx context.Context, n int) ([]ruleset.Ban, bool, error)
	})
	if !ok || recorded >= kernelBanBound {
		return recorded
	}
	bans, _, err := lb.BansUpTo(ctx, kernelBanBound)
	if err != nil {
		return recorded
	}
	return max(recorded, len(bans))
}
