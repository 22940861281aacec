package importer

import (
	"bufio"
	"bytes"
	"fmt"
	"net/netip"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/moat-fw/moat/internal/termtext"
)

// iniFile is fail2ban's configuration: sections of key = value, later
// files overriding earlier ones.
type iniFile map[string]map[string]string

// blanks are the white space of a line that fail2ban's files may hold.
var blanks = strings.NewReplacer("\t", " ", "\f", " ", "\v", " ")

// readINI merges one file into ini.
func readINI(ini iniFile, data []byte) {
	sec := ""
	var lastKey string
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		// Values are quoted in notes (terminal, '# NOTE:' lines): control
		// characters are dropped; a tab, form feed or vertical tab is a
		// space (Printable would write the last two as escapes).
		raw := termtext.Printable(blanks.Replace(sc.Text()))
		line := strings.TrimSpace(raw)
		if line == "" || line[0] == '#' || line[0] == ';' {
			continue
		}
		// An indented line continues the previous value (ignoreip lists).
		if (raw[0] == ' ' || raw[0] == '\t') && lastKey != "" && ini[sec] != nil {
			ini[sec][lastKey] += " " + line
			continue
		}
		if strings.HasPrefix(line, "[") && strings.HasSuffix(line, "]") {
			sec = strings.TrimSpace(line[1 : len(line)-1])
			if ini[sec] == nil {
				ini[sec] = map[string]string{}
			}
			lastKey = ""
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok || sec == "" {
			continue
		}
		if i := strings.Index(v, " #"); i >= 0 {
			v = v[:i]
		}
		if i := strings.Index(v, " ;"); i >= 0 {
			v = v[:i]
		}
		lastKey = strings.ToLower(strings.TrimSpace(k))
		ini[sec][lastKey] = strings.TrimSpace(v)
	}
}

// fail2banFiles lists fail2ban's files in the order it reads them.
func fail2banFiles(dir string) []string {
	files := []string{filepath.Join(dir, "jail.conf")}
	conf, _ := filepath.Glob(filepath.Join(dir, "jail.d", "*.conf"))
	sort.Strings(conf)
	files = append(files, conf...)
	files = append(files, filepath.Join(dir, "jail.local"))
	local, _ := filepath.Glob(filepath.Join(dir, "jail.d", "*.local"))
	sort.Strings(local)
	return append(files, local...)
}

// ImportFail2ban maps fail2ban's sshd jail (from jail.conf, jail.d,
// jail.local under dir) to 'guard sshd' and 'allowlist' lines.
func ImportFail2ban(dir string) (*Result, error) {
	ini := iniFile{}
	read := 0
	for _, f := range fail2banFiles(dir) {
		data, err := readSmall(f)
		if err != nil {
			continue
		}
		read++
		readINI(ini, data)
	}
	if read == 0 {
		return nil, fmt.Errorf("import fail2ban: no jail.conf, jail.local or jail.d/ in %s", dir)
	}
	res := &Result{}
	get := func(key string) (string, bool) {
		for _, sec := range []string{"sshd", "DEFAULT"} {
			if v, ok := ini[sec][key]; ok {
				return v, true
			}
		}
		return "", false
	}
	if _, ok := ini["sshd"]; !ok {
		res.Notes = append(res.Notes, "fail2ban has no [sshd] jail: only its [DEFAULT] settings are imported, and the guard is off")
	}
	enabled, _ := get("enabled")
	on := isTrue(enabled) && ini["sshd"] != nil
	guard := []string{"guard", "sshd"}
	if !on {
		guard = append(guard, "off")
		res.Notes = append(res.Notes, "fail2ban's sshd jail is not enabled: the guard is written 'off' ('guard sshd' turns it on)")
	}
	if v, ok := get("maxretry"); ok {
		if n, err := strconv.Atoi(v); err == nil && n >= 1 && n <= 1000 {
			guard = append(guard, "maxretry", strconv.Itoa(n))
		} else {
			res.Notes = append(res.Notes, fmt.Sprintf("maxretry = %s: not a count from 1 to 1000; not imported", v))
		}
	}
	dur := func(key, moatKey string) {
		v, ok := get(key)
		if !ok {
			return
		}
		d, msg := f2bDuration(v)
		if msg != "" {
			res.Notes = append(res.Notes, fmt.Sprintf("%s = %s: %s; not imported", key, v, msg))
			return
		}
		if d < 0 {
			res.Notes = append(res.Notes, fmt.Sprintf("%s = %s (permanent) is written as 365d, moat's longest ban", key, v))
			d = 365 * 24 * time.Hour
		}
		if d < time.Second || d > 365*24*time.Hour {
			res.Notes = append(res.Notes, fmt.Sprintf("%s = %s: outside 1s..365d; not imported", key, v))
			return
		}
		guard = append(guard, moatKey, moatDuration(d))
	}
	dur("findtime", "findtime")
	dur("bantime", "bantime")
	if inc, _ := get("bantime.increment"); isTrue(inc) {
		factor := 1.0
		if v, ok := get("bantime.factor"); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil || f <= 0 {
				res.Notes = append(res.Notes, fmt.Sprintf("bantime.factor = %s: not a number; 1 assumed", v))
			} else {
				factor = f
			}
		}
		// fail2ban's default formula doubles the ban each time (times the
		// factor); moat multiplies by bantime-factor per earlier ban.
		mf := 2 * factor
		if mf > 100 {
			mf = 100
		}
		guard = append(guard, "bantime-factor", strconv.FormatFloat(mf, 'f', -1, 64))
		res.Notes = append(res.Notes, "bantime.increment: fail2ban's growth (bantime × factor × 2^n) is written as bantime-factor; bantime.formula, bantime.multipliers and bantime.rndtime are not carried over")
		dur("bantime.maxtime", "bantime-max")
	}
	res.Lines = append(res.Lines, strings.Join(guard, " "))
	if v, ok := get("ignoreip"); ok {
		var allow []string
		for _, item := range strings.FieldsFunc(v, func(r rune) bool { return r == ' ' || r == ',' || r == '\t' }) {
			if strings.Contains(item, "%(") {
				res.Notes = append(res.Notes, fmt.Sprintf("ignoreip %s: fail2ban interpolation is not carried over", item))
				continue
			}
			if pfx, err := netip.ParsePrefix(item); err == nil {
				allow = append(allow, pfx.Masked().String())
			} else if a, err := netip.ParseAddr(item); err == nil && a.Zone() == "" {
				allow = append(allow, a.String())
			} else {
				res.Notes = append(res.Notes, fmt.Sprintf("ignoreip %q: only addresses and CIDRs are carried over (not host names)", item))
			}
		}
		if len(allow) > 0 {
			res.Lines = append(res.Lines, "allowlist "+strings.Join(allow, " "))
		}
	}
	for _, k := range []string{"port", "action", "banaction", "backend", "logpath", "filter", "mode"} {
		if v, ok := ini["sshd"][k]; ok {
			res.Notes = append(res.Notes, fmt.Sprintf("[sshd] %s = %s is not carried over: moat's guard finds sshd's ports and log itself", k, v))
		}
	}
	var others []string
	for sec := range ini {
		if sec != "sshd" && sec != "DEFAULT" && sec != "INCLUDES" && isTrue(ini[sec]["enabled"]) {
			others = append(others, sec)
		}
	}
	sort.Strings(others)
	if len(others) > 0 {
		res.Notes = append(res.Notes, fmt.Sprintf("enabled jails other than sshd are not carried over: %s", strings.Join(others, ", ")))
	}
	return res, nil
}

func isTrue(v string) bool {
	switch strings.ToLower(strings.TrimSpace(v)) {
	case "true", "yes", "1", "on", "enabled":
		return true
	}
	return false
}

// f2bDuration reads fail2ban's times: seconds (600), or numbers with
// units (10m, 1h 30m, 1d, 1w, 1mo, 1y); -1 is permanent (returned < 0).
func f2bDuration(v string) (time.Duration, string) {
	v = strings.ToLower(strings.TrimSpace(v))
	if v == "-1" {
		return -1, ""
	}
	units := []struct {
		suffix string
		d      time.Duration
	}{{"seconds", time.Second}, {"second", time.Second}, {"sec", time.Second}, {"s", time.Second},
		{"minutes", time.Minute}, {"minute", time.Minute}, {"min", time.Minute}, {"mo", 30 * 24 * time.Hour}, {"m", time.Minute},
		{"hours", time.Hour}, {"hour", time.Hour}, {"h", time.Hour}, {"days", 24 * time.Hour}, {"day", 24 * time.Hour}, {"d", 24 * time.Hour},
		{"weeks", 7 * 24 * time.Hour}, {"week", 7 * 24 * time.Hour}, {"w", 7 * 24 * time.Hour}, {"years", 365 * 24 * time.Hour}, {"y", 365 * 24 * time.Hour}}
	var total time.Duration
	rest := strings.ReplaceAll(v, " ", "")
	if rest == "" {
		return 0, "empty"
	}
	for rest != "" {
		i := 0
		for i < len(rest) && rest[i] >= '0' && rest[i] <= '9' {
			i++
		}
		if i == 0 || i > 9 {
			return 0, "expected a number of seconds or a time such as 10m"
		}
		n, _ := strconv.Atoi(rest[:i])
		rest = rest[i:]
		unit := time.Second
		for _, u := range units {
			if strings.HasPrefix(rest, u.suffix) {
				unit, rest = u.d, rest[len(u.suffix):]
				break
			}
		}
		total += time.Duration(n) * unit
		if total > 100*365*24*time.Hour {
			return 0, "too long"
		}
	}
	return total, ""
}

// moatDuration writes a duration the way moat.conf does: 1w, 2d, 1h, 10m, 90s.
func moatDuration(d time.Duration) string {
	s := int64(d / time.Second)
	for _, u := range []struct {
		n   int64
		sfx string
	}{{604800, "w"}, {86400, "d"}, {3600, "h"}, {60, "m"}} {
		if s%u.n == 0 {
			return strconv.FormatInt(s/u.n, 10) + u.sfx
		}
	}
	return strconv.FormatInt(s, 10) + "s"
}
