package ruleset

import (
	"strings"
	"testing"
)

func TestSourceComment(t *testing.T) {
	cases := map[string]string{
		"":                             "managed by moat: edit /etc/moat/moat.conf, not this table",
		"/srv/fw/moat.conf":            "managed by moat: edit /srv/fw/moat.conf, not this table",
		"/tmp/a\" ; flush ruleset":     "managed by moat: edit its policy file",
		"/tmp/$(reboot)":               "managed by moat: edit its policy file",
		"/" + strings.Repeat("d", 200): "managed by moat: edit its policy file",
		"/tmp/new\nline":               "managed by moat: edit its policy file",
	}
	for src, want := range cases {
		got := (&Ruleset{Source: src}).SourceComment()
		if !strings.HasPrefix(got, want) {
			t.Errorf("Source %q: comment %q, want it to start with %q", src, got, want)
		}
		if len(got) > 127 {
			t.Errorf("Source %q: comment is %d bytes, more than the kernel keeps", src, len(got))
		}
	}
}
