package cli

import (
	"bytes"
	"reflect"
	"regexp"
	"strings"
	"testing"

	"github.com/moat-fw/moat/internal/policy"
)

// TestStatusAsUFW: 'moat status' names a rule's application profile as
// ufw does (the profile alone; verbose, its ports and the profile), a
// profile of several protocols is one row unless verbose (one row per
// kernel rule, with its counters), and verbose says the logging level
// as ufw's 'Logging: on (low)'. Before, the profile rules read as bare
// ports ('22/tcp') and verbose never said whether logging was on.
func TestStatusAsUFW(t *testing.T) {
	rule := func(n int, j policy.RuleJSON) statusRule {
		j.Action, j.Direction, j.From, j.FromPort, j.To, j.Family = policy.Allow, policy.In, "any", "any", "any", policy.FamilyAny
		if j.Proto == "" {
			j.Proto = "tcp"
		}
		return statusRule{Number: n, Line: n, Applied: true, InFile: true, RuleJSON: j}
	}
	from := rule(3, policy.RuleJSON{FromApp: "OpenSSH"})
	from.FromPort, from.ToPort = "22", "any"
	// ufw: "443/tcp  ALLOW IN  2001:db8::/32" (a side with ports says
	// "(v6)" only when neither side has an address), "Anywhere (v6)  DENY
	// IN  2001:db8::3" (an Anywhere side always says it).
	v6from := rule(5, policy.RuleJSON{ToPort: "443"})
	v6from.From, v6from.Family = "2001:db8::/32", policy.FamilyV6
	v6deny := rule(7, policy.RuleJSON{Proto: "any"})
	v6deny.Action, v6deny.From, v6deny.ToPort, v6deny.Family = policy.Deny, "2001:db8::3/128", "any", policy.FamilyV6
	v6only := rule(6, policy.RuleJSON{Proto: "ipv6-icmp"})
	v6only.ToPort, v6only.Family = "any", policy.FamilyV6
	rep := &statusReport{Status: "active", Logging: "low", Defaults: map[string]statusDefault{}, Rules: []statusRule{
		rule(1, policy.RuleJSON{ToPort: "22", ToApp: "OpenSSH"}),
		rule(2, policy.RuleJSON{Proto: "udp", ToPort: "137,138", ToApp: "CIFS"}),
		rule(2, policy.RuleJSON{Proto: "tcp", ToPort: "139,445", ToApp: "CIFS"}),
		from,
		rule(4, policy.RuleJSON{ToPort: "80"}),
		v6from, v6only, v6deny,
	}}
	for _, c := range []struct {
		mode       string
		want, nots []string
	}{
		{"", []string{"\nOpenSSH ", "\nCIFS ", "ALLOW IN  OpenSSH", "\n80/tcp ", "\n443/tcp ", "2001:db8::/32", "\nAnywhere/ipv6-icmp (v6) ", "\nAnywhere (v6)            DENY IN   2001:db8::3"}, []string{"137,138", "Logging", "443/tcp (v6)"}},
		{"numbered", []string{"[ 1] OpenSSH ", "[ 2] CIFS ", "[ 4] 80/tcp "}, []string{"139,445"}},
		{"verbose", []string{"Logging: on (low)\n", "\n22/tcp (OpenSSH) ", "\n137,138/udp (CIFS) ", "\n139,445/tcp (CIFS) ", "ALLOW IN  22/tcp (OpenSSH)"}, nil},
	} {
		var out bytes.Buffer
		a := &app{out: &out, errOut: &bytes.Buffer{}}
		if err := a.printStatus(rep, c.mode); err != nil {
			t.Fatal(err)
		}
		s := out.String()
		for _, w := range c.want {
			if !strings.Contains(s, w) {
				t.Errorf("status %s: no %q in\n%s", c.mode, w, s)
			}
		}
		for _, w := range c.nots {
			if strings.Contains(s, w) {
				t.Errorf("status %s: %q in\n%s", c.mode, w, s)
			}
		}
		if c.mode == "numbered" && strings.Count(s, "CIFS") != 1 {
			t.Errorf("status numbered: the CIFS line is not one row:\n%s", s)
		}
	}
	rep.Logging = "off"
	var out bytes.Buffer
	a := &app{out: &out, errOut: &bytes.Buffer{}}
	if err := a.printStatus(rep, "verbose"); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "Logging: off\n") {
		t.Errorf("status verbose, logging off:\n%s", out.String())
	}
}

// TestStatusVerboseInactive: inactive, 'status verbose' shows the file's
// policy without counters and says none of it is applied: it showed
// "0 packets  0 bytes" for every rule, default and built-in, as if they
// were in the kernel and matched nothing.
func TestStatusVerboseInactive(t *testing.T) {
	rep := &statusReport{Status: "inactive", Config: "/etc/moat/moat.conf", Defaults: map[string]statusDefault{
		"incoming": {Policy: policy.Deny, Line: 1}, "outgoing": {Policy: policy.Allow}, "routed": {Disabled: true}},
		Builtins: []statusBuiltin{{Chain: "input", Text: "accept loopback traffic"}},
		Rules: []statusRule{{Number: 1, Line: 2, InFile: true, RuleJSON: policy.RuleJSON{Action: policy.Allow, Direction: policy.In,
			Proto: "tcp", From: "any", FromPort: "any", To: "any", ToPort: "22", Family: policy.FamilyAny}}}}
	var out bytes.Buffer
	a := &app{out: &out, errOut: &bytes.Buffer{}}
	if err := a.printStatus(rep, "verbose"); err != nil {
		t.Fatal(err)
	}
	s := out.String()
	if strings.Contains(s, "packet") || strings.Contains(s, "Bytes") || !strings.Contains(s, "Rules of /etc/moat/moat.conf, none applied (moat is inactive") ||
		!strings.Contains(s, "\n22/tcp  ") || !strings.Contains(s, "DENY incoming") {
		t.Errorf("status verbose, inactive:\n%s", s)
	}
	rep.Status = "active"
	out.Reset()
	if err := a.printStatus(rep, "verbose"); err != nil {
		t.Fatal(err)
	}
	if s := out.String(); !strings.Contains(s, "Packets") || !strings.Contains(s, "0 packets") || strings.Contains(s, "none applied") {
		t.Errorf("status verbose, active:\n%s", s)
	}
}

// TestStatusJSONDocumented: every field 'status --json' can print is
// named in 'moat status --help' (and so in moat-status(8)); only some
// were, in the README. The same for the other commands whose --help
// lists their --json fields.
func TestStatusJSONDocumented(t *testing.T) {
	for _, c := range []struct {
		cmd      []string
		ty       reflect.Type
		minTypes int
	}{
		{[]string{"status"}, reflect.TypeOf(statusReport{}), 6},
		{[]string{"explain"}, reflect.TypeOf(explanation{}), 3},
		{[]string{"blocklist", "list"}, reflect.TypeOf(blocklistInfo{}), 1},
		{[]string{"blocklist", "update"}, reflect.TypeOf(updateJSON{}), 1},
		{[]string{"log"}, reflect.TypeOf(logSummary{}), 2},
	} {
		a := &app{}
		cmd, _, err := a.rootCommand().Find(c.cmd)
		if err != nil {
			t.Fatal(err)
		}
		name := strings.Join(c.cmd, " ")
		if walked := jsonUndocumented(t, name, c.ty, cmd.Long); walked < c.minTypes {
			t.Errorf("%s: walked %d types", name, walked)
		}
	}
}

// jsonUndocumented fails t for each JSON field of ty (and the types of
// its fields) that help does not name, and says how many types it
// walked.
func jsonUndocumented(t *testing.T, cmd string, ty reflect.Type, help string) int {
	t.Helper()
	seen := map[reflect.Type]bool{}
	var walk func(reflect.Type)
	walk = func(ty reflect.Type) {
		for ty.Kind() == reflect.Pointer || ty.Kind() == reflect.Slice || ty.Kind() == reflect.Map {
			ty = ty.Elem()
		}
		if ty.Kind() != reflect.Struct || seen[ty] || ty.PkgPath() == "time" || strings.HasSuffix(ty.PkgPath(), "/foreign") {
			return
		}
		seen[ty] = true
		for i := range ty.NumField() {
			f := ty.Field(i)
			name := strings.Split(f.Tag.Get("json"), ",")[0]
			if name == "-" || (name == "" && !f.Anonymous) {
				continue
			}
			if name != "" && !regexp.MustCompile(`\b`+name+`\b`).MatchString(help) {
				t.Errorf("%s --json field %q (%s.%s) is not in 'moat %s --help'", cmd, name, ty.Name(), f.Name, cmd)
			}
			walk(f.Type)
		}
	}
	walk(ty)
	return len(seen)
}
