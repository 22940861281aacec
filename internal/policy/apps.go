package policy

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/moat-fw/moat/internal/termtext"
)

// App is an application profile in ufw's INI format
// (/etc/ufw/applications.d, /etc/moat/apps.d):
//
//	[Nginx Full]
//	title=Web Server (Nginx, HTTP + HTTPS)
//	description=Small, but very powerful and efficient web server
//	ports=80,443/tcp
//
// ports is one or more PORTS[/PROTO] joined by '|' (137,138/udp|139,445/tcp);
// without a protocol a port is both tcp and udp.
type App struct {
	Name        string
	Title       string
	Description string
	PortsText   string    // as written
	Parts       []AppPart // one per protocol
	File        string    // where it was read
}

// AppPart is the ports of one protocol ("any": tcp and udp).
type AppPart struct {
	Proto string
	Ports Ports
}

// Apps are the known profiles by name.
type Apps map[string]*App

// AppDirs are where profiles are read, in order: a profile in a later
// directory replaces one of the same name in an earlier one.
var AppDirs = []string{"/etc/ufw/applications.d", "/etc/moat/apps.d"}

// appNameRE is what ufw accepts as a profile name (it must not read as a
// port or a keyword; checked separately). validAppName decides it without
// compiling it: every command that reads the profiles (an edit does) spent
// about 0.1 ms of CPU and 40 page faults compiling it. Tests hold the two
// to the same answers.
const appNameRE = `^[A-Za-z0-9][A-Za-z0-9 _.+()-]{0,63}$`

// validAppName says whether name matches appNameRE.
func validAppName(name string) bool {
	if len(name) == 0 || len(name) > 64 {
		return false
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		switch {
		case 'A' <= c && c <= 'Z', 'a' <= c && c <= 'z', '0' <= c && c <= '9':
		case i > 0 && (c == ' ' || c == '_' || c == '.' || c == '+' || c == '(' || c == ')' || c == '-'):
		default:
			return false
		}
	}
	return true
}

// maxAppFile bounds one profile file (ufw's own limit is 10 MB; real
// files are a few hundred bytes).
const maxAppFile = 1 << 20

// LoadApps reads the profiles of dirs. Files it cannot use are skipped and
// named in the returned warnings (a broken file from one package must not
// stop the firewall); a missing directory is not a problem.
func LoadApps(dirs []string) (Apps, []string) {
	apps := Apps{}
	var warns []string
	for _, dir := range dirs {
		entries, err := os.ReadDir(dir)
		if err != nil {
			if !os.IsNotExist(err) {
				warns = append(warns, fmt.Sprintf("application profiles: %v", err))
			}
			continue
		}
		for _, e := range entries {
			name := e.Name()
			// ufw skips editor and dpkg leftovers.
			if strings.HasPrefix(name, ".") || strings.HasSuffix(name, "~") || strings.Contains(name, ".dpkg-") || strings.HasSuffix(name, ".ucf-old") {
				continue
			}
			path := filepath.Join(dir, name)
			st, err := os.Stat(path)
			if err != nil || !st.Mode().IsRegular() {
				continue
			}
			if st.Size() > maxAppFile {
				warns = append(warns, fmt.Sprintf("%s: %d bytes is too large for an application profile; skipped", path, st.Size()))
				continue
			}
			data, err := os.ReadFile(path)
			if err != nil {
				warns = append(warns, fmt.Sprintf("application profiles: %v", err))
				continue
			}
			found, w := ParseApps(path, data)
			warns = append(warns, w...)
			for _, a := range found {
				apps[a.Name] = a
			}
		}
	}
	return apps, warns
}

// ParseApps reads one profile file. Profiles with errors are skipped and
// named in the warnings, with file and line.
func ParseApps(file string, data []byte) ([]*App, []string) {
	var apps []*App
	var warns []string
	var cur *App
	curLine := 0
	finish := func() {
		if cur == nil {
			return
		}
		if cur.PortsText == "" {
			warns = append(warns, fmt.Sprintf("%s:%d: profile '%s' has no 'ports': skipped", file, curLine, cur.Name))
		} else if parts, msg := parseAppPorts(cur.PortsText); msg != "" {
			warns = append(warns, fmt.Sprintf("%s:%d: profile '%s': %s: skipped", file, curLine, cur.Name, msg))
		} else {
			cur.Parts = parts
			apps = append(apps, cur)
		}
		cur = nil
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	// A line is never longer than the file: a 64 KiB buffer for each of
	// the dozen small profile files was 0.7 MB allocated every command.
	sc.Buffer(make([]byte, 0, min(len(data)+1, 64<<10)), maxAppFile)
	n := 0
	for sc.Scan() {
		n++
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' || line[0] == ';' {
			continue
		}
		if strings.HasPrefix(line, "[") {
			finish()
			if !strings.HasSuffix(line, "]") {
				warns = append(warns, fmt.Sprintf("%s:%d: bad section header %q", file, n, line))
				continue
			}
			name := strings.TrimSpace(line[1 : len(line)-1])
			if msg := checkAppName(name); msg != "" {
				warns = append(warns, fmt.Sprintf("%s:%d: %s: skipped", file, n, msg))
				continue
			}
			cur, curLine = &App{Name: name, File: file}, n
			continue
		}
		key, val, ok := strings.Cut(line, "=")
		if !ok {
			key, val, ok = strings.Cut(line, ":")
		}
		if !ok || cur == nil {
			continue
		}
		switch strings.ToLower(strings.TrimSpace(key)) {
		case "title":
			cur.Title = clean(val)
		case "description":
			cur.Description = clean(val)
		case "ports":
			cur.PortsText = strings.TrimSpace(val)
		}
	}
	finish()
	return apps, warns
}

// clean keeps printable text only (profiles are shown to the admin).
func clean(s string) string {
	return termtext.Printable(strings.TrimSpace(s))
}

// checkAppName says what is wrong with a profile name, or "".
func checkAppName(name string) string {
	switch {
	case !validAppName(name):
		return fmt.Sprintf("bad profile name %q: expected at most 64 letters, digits, spaces and _.+()-, starting with a letter or digit", name)
	case numericPorts().MatchString(name):
		return fmt.Sprintf("bad profile name %q: a name cannot be a port", name)
	case ruleWords[strings.ToLower(name)] || strings.EqualFold(name, "any"):
		return fmt.Sprintf("bad profile name %q: a name cannot be a rule keyword", name)
	}
	return ""
}

// parseAppPorts reads 'PORTS[/PROTO]|PORTS[/PROTO]...'.
func parseAppPorts(s string) ([]AppPart, string) {
	var parts []AppPart
	seen := map[string]bool{}
	for _, item := range strings.Split(s, "|") {
		item = strings.TrimSpace(item)
		spec, proto, hasProto := strings.Cut(item, "/")
		proto = strings.ToLower(proto)
		if !hasProto {
			proto = "any"
		} else if proto != "tcp" && proto != "udp" {
			return nil, fmt.Sprintf("bad protocol in ports %q: expected tcp or udp", item)
		}
		if !numericPorts().MatchString(spec) {
			return nil, fmt.Sprintf("bad ports %q: expected e.g. 22/tcp, 80,443/tcp or 60000:61000/udp", item)
		}
		ports, msg := parsePortList(spec)
		if msg != "" {
			return nil, fmt.Sprintf("bad ports %q: %s", item, msg)
		}
		if proto == "any" && (len(ports) > 1 || ports[0].First != ports[0].Last) {
			return nil, fmt.Sprintf("bad ports %q: lists and ranges need /tcp or /udp", item)
		}
		if seen[proto] {
			// Merge a second list of the same protocol into the first.
			for i := range parts {
				if parts[i].Proto == proto {
					parts[i].Ports = append(parts[i].Ports, ports...)
				}
			}
			continue
		}
		seen[proto] = true
		parts = append(parts, AppPart{Proto: proto, Ports: ports})
	}
	for _, p := range parts {
		items := 0
		for _, r := range p.Ports {
			items++
			if r.First != r.Last {
				items++
			}
		}
		if items > maxPortItems {
			return nil, fmt.Sprintf("too many ports for %s: at most %d, a range counting as two", p.Proto, maxPortItems)
		}
	}
	return parts, ""
}

// parsePortList reads '22', '80,443', '6000:6007' (numbers only).
func parsePortList(spec string) (Ports, string) {
	var out Ports
	for _, item := range strings.Split(spec, ",") {
		lo, hi, isRange := strings.Cut(item, ":")
		a, err := portNum(lo)
		if err != nil {
			return nil, fmt.Sprintf("'%s' is not a port from 1 to 65535", lo)
		}
		b := a
		if isRange {
			if b, err = portNum(hi); err != nil {
				return nil, fmt.Sprintf("'%s' is not a port from 1 to 65535", hi)
			}
			if b <= a {
				return nil, fmt.Sprintf("bad range '%s': the first port must be lower", item)
			}
		}
		out = append(out, PortRange{First: a, Last: b})
	}
	return out, ""
}

// Names lists the profile names, sorted.
func (a Apps) Names() []string {
	out := make([]string, 0, len(a))
	for n := range a {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// Lookup finds a profile by its exact name (as ufw does).
func (a Apps) Lookup(name string) (*App, bool) {
	app, ok := a[name]
	return app, ok
}

// Close lists up to three names close to name: same letters in another
// case, a prefix, or a few edits away.
func (a Apps) Close(name string) []string {
	type cand struct {
		name string
		d    int
	}
	var cs []cand
	low := strings.ToLower(name)
	for _, n := range a.Names() {
		ln := strings.ToLower(n)
		d := editDistance(low, ln)
		switch {
		case ln == low:
			d = 0
		case strings.HasPrefix(ln, low) || strings.HasPrefix(low, ln) || strings.Contains(ln, low):
			d = min(d, 1)
		}
		if d <= 3 {
			cs = append(cs, cand{n, d})
		}
	}
	sort.SliceStable(cs, func(i, j int) bool { return cs[i].d < cs[j].d })
	var out []string
	for i := 0; i < len(cs) && i < 3; i++ {
		out = append(out, cs[i].name)
	}
	return out
}

// unknownMsg is the message for a name that is neither a port, a service
// nor a profile (onlyApp: after 'app', where only profiles go).
func (a Apps) unknownMsg(name string, onlyApp bool) string {
	msg := fmt.Sprintf("unknown application profile or service '%s'", name)
	if onlyApp {
		msg = fmt.Sprintf("unknown application profile '%s'", name)
	}
	if close := a.Close(name); len(close) > 0 {
		msg += ": did you mean " + quoteList(close) + "?"
	} else if onlyApp {
		msg += ": 'moat app list' lists the profiles"
	} else {
		msg += ": expected a port (22/tcp), a service from /etc/services (ssh)"
		if len(a) > 0 {
			msg += " or a profile ('moat app list')"
		}
	}
	return msg
}

func quoteList(names []string) string {
	q := make([]string, len(names))
	for i, n := range names {
		q[i] = "'" + n + "'"
	}
	if len(q) == 1 {
		return q[0]
	}
	return strings.Join(q[:len(q)-1], ", ") + " or " + q[len(q)-1]
}

// AppsFromPorts rebuilds profiles from name → ports (as saved with the
// boot ruleset); entries that do not parse are left out.
func AppsFromPorts(ports map[string]string) Apps {
	apps := Apps{}
	for name, text := range ports {
		if checkAppName(name) != "" {
			continue
		}
		if parts, msg := parseAppPorts(text); msg == "" {
			apps[name] = &App{Name: name, PortsText: text, Parts: parts, File: "saved"}
		}
	}
	return apps
}
