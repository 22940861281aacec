package cli

import (
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/moat-fw/moat/internal/policy"
	"github.com/moat-fw/moat/internal/ruleset"
)

// TestDocExamplesHaveNoDeadRules: the example policies of moat.conf(5),
// the packaged moat.conf and the README are valid and have no rule that an
// earlier one covers: moat.conf(5) taught 'allow 22/tcp' then 'allow
// OpenSSH', "allow 'Nginx Full'" after 'allow 80,443/tcp' and 'limit ssh
// rate 6/30s' last, three rules that never match ('moat check' warns).
func TestDocExamplesHaveNoDeadRules(t *testing.T) {
	read := func(p string) string {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	man := regexp.MustCompile(`(?s)\n\.SH EXAMPLES\n\.nf\n(.*?)\n\.fi\n`).FindStringSubmatch(read("../../packaging/man/moat.conf.5"))
	readme := regexp.MustCompile("(?s)\n```\n(# /etc/moat/moat.conf\n.*?)```\n").FindStringSubmatch(read("../../README.md"))
	var tmpl []string
	in := false
	for _, l := range strings.Split(read("../../packaging/moat.conf"), "\n") {
		switch {
		case strings.HasSuffix(l, "Examples:"):
			in = true
		case in && strings.HasPrefix(l, "#   "):
			tmpl = append(tmpl, strings.TrimPrefix(l, "#   "))
		case in && len(tmpl) > 0:
			in = false
		}
	}
	if man == nil || readme == nil || len(tmpl) < 5 {
		t.Fatalf("examples not found: man %v, README %v, moat.conf %d lines", man != nil, readme != nil, len(tmpl))
	}
	svc := policy.ParseServices([]byte("ssh 22/tcp\nauth 113/tcp\n"))
	apps := policy.AppsFromPorts(map[string]string{"Samba": "137,138/udp|139,445/tcp", "OpenSSH": "22/tcp", "Nginx Full": "80,443/tcp"})
	for name, text := range map[string]string{"moat.conf(5)": man[1], "README": readme[1], "packaging/moat.conf": strings.Join(tmpl, "\n") + "\n"} {
		d := policy.NewDocument(name, []byte(text))
		d.Apps = apps
		p, err := d.Policy(svc)
		if err != nil {
			t.Errorf("%s's example: %v", name, err)
			continue
		}
		if p.NumRules() < 4 {
			t.Errorf("%s's example: %d rules", name, p.NumRules())
		}
		for _, c := range ruleset.Shadowed(p) {
			t.Errorf("%s's example teaches a dead rule: %s", name, c)
		}
	}
}
