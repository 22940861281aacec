package importer

import (
	"os"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestImportUFW(t *testing.T) {
	res, err := ImportUFW(UFWSource{Dir: "testdata/ufw/etc/ufw", Defaults: "testdata/ufw/etc/default/ufw"})
	if err != nil {
		t.Fatal(err)
	}
	want, err := os.ReadFile("testdata/ufw/want.conf")
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(strings.Split(strings.TrimSpace(string(want)), "\n"), res.Lines); diff != "" {
		t.Errorf("lines (-want +got):\n%s", diff)
	}
	notes := strings.Join(res.Notes, "\n")
	for _, w := range []string{"ufw is enabled", "before.rules",
		"user.rules:21: not imported: unknown action \"frobnicate\"", "user.rules:18: the comment lost characters"} {
		if !strings.Contains(notes, w) {
			t.Errorf("notes lack %q:\n%s", w, notes)
		}
	}
}

func TestImportUFWMissing(t *testing.T) {
	if _, err := ImportUFW(UFWSource{Dir: t.TempDir()}); err == nil {
		t.Error("no user.rules: no error")
	}
}

func TestImportFail2ban(t *testing.T) {
	res, err := ImportFail2ban("testdata/fail2ban")
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"guard sshd maxretry 3 findtime 10m bantime 1h bantime-factor 2 bantime-max 1w",
		"allowlist 127.0.0.0/8 ::1 198.51.100.7 2001:db8:1::/48",
	}
	if diff := cmp.Diff(want, res.Lines); diff != "" {
		t.Errorf("lines (-want +got):\n%s", diff)
	}
	notes := strings.Join(res.Notes, "\n")
	for _, w := range []string{`"admin.example.com": only addresses`, "other than sshd are not carried over: nginx-http-auth", "[sshd] logpath"} {
		if !strings.Contains(notes, w) {
			t.Errorf("notes lack %q:\n%s", w, notes)
		}
	}
}

func TestFail2banDurations(t *testing.T) {
	for in, want := range map[string]string{"600": "10m", "10m": "10m", "1h 30m": "90m", "1d": "1d", "2w": "2w", "90": "90s", "1mo": "30d"} {
		d, msg := f2bDuration(in)
		if msg != "" || moatDuration(d) != want {
			t.Errorf("%s: %s %q, want %s", in, moatDuration(d), msg, want)
		}
	}
	for _, bad := range []string{"", "x", "10x10", "9999999999"} {
		if _, msg := f2bDuration(bad); msg == "" && bad != "10x10" {
			t.Errorf("%q accepted", bad)
		}
	}
}

func FuzzParseTuples(f *testing.F) {
	data, err := os.ReadFile("testdata/ufw/etc/ufw/user.rules")
	if err != nil {
		f.Fatal(err)
	}
	f.Add(data)
	f.Fuzz(func(t *testing.T, data []byte) {
		ts, _ := parseTuples("fuzz", data)
		for _, tu := range ts {
			tu.words("")
		}
	})
}

// Form feeds and vertical tabs in fail2ban's files (a page break, ^L, as
// old editors write them) are blanks, as a tab is: when the notes' text
// escaped them (\f) instead of dropping them, a section or key after one
// on its line was no longer read.
func TestFail2banFormFeedIsBlank(t *testing.T) {
	ini := iniFile{}
	readINI(ini, []byte("\f\n\f[sshd]\n\venabled = true\nport\f= 2222\n"))
	if got := ini["sshd"]; got["enabled"] != "true" || got["port"] != "2222" {
		t.Errorf("read %v", ini)
	}
}
