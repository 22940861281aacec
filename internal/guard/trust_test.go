package guard

import "testing"

func TestTrustedFileLine(t *testing.T) {
	for _, c := range []struct {
		line string
		want bool
	}{
		{"Nov 25 11:40:01 srv sshd[812]: Failed password for root from 198.51.100.9 port 22 ssh2", true},
		{"Nov 25 11:40:01 srv sshd-session[812]: Failed password for root from 198.51.100.9 port 22 ssh2", true},
		{"Nov  5 11:40:01 srv dropbear[81]: Bad password attempt for 'root' from 198.51.100.9:5000", true},
		{"2026-11-25T11:40:01.123456+00:00 srv sshd[812]: Failed password for root from 198.51.100.9 port 22 ssh2", true},
		{"Nov 25 11:40:01 srv sshd[812] Failed password for root from 198.51.100.9 port 22 ssh2", true},
		{"<38>1 2026-11-25T11:40:01Z srv sshd 812 - - Failed password for root from 198.51.100.9 port 22 ssh2", true},
		// sshd -E: no syslog header at all, so not from syslog.
		{"Failed password for root from 198.51.100.9 port 22 ssh2", true},
		// logger -t sshd (no PID), a path, another program, no tag.
		{"Nov 25 11:40:01 srv sshd: Failed password for root from 198.51.100.9 port 22 ssh2", false},
		{"Nov 25 11:40:01 srv /tmp/sshd[812]: Failed password for root from 198.51.100.9 port 22 ssh2", false},
		{"Nov 25 11:40:01 srv xsshd[812]: Failed password for root from 198.51.100.9 port 22 ssh2", false},
		{"Nov 25 11:40:01 srv sshd-sessionx[812]: Failed password for root from 198.51.100.9 port 22 ssh2", false},
		{"Nov 25 11:40:01 srv logger[812]: sshd[1]: Failed password for root from 198.51.100.9 port 22 ssh2", false},
		{"Nov 25 11:40:01 srv Failed password for root from 198.51.100.9 port 22 ssh2", false},
		{"<38>1 2026-11-25T11:40:01Z srv sshd - - - Failed password for root from 198.51.100.9 port 22 ssh2", false},
		{"<38>1 2026-11-25T11:40:01Z srv logger 812 - - Failed password for root from 198.51.100.9 port 22 ssh2", false},
	} {
		if got := TrustedFileLine(c.line); got != c.want {
			t.Errorf("TrustedFileLine(%q) = %v, want %v", c.line, got, c.want)
		}
	}
}

// FuzzParseFileLine: the guard's loop splits a line's banner once;
// parseFileLine must say what TrustedFileLine and then ParseLine say.
func FuzzParseFileLine(f *testing.F) {
	for _, c := range readCorpus(f) {
		f.Add(c.line)
	}
	for _, s := range fuzzSeeds {
		f.Add(s)
	}
	f.Add("Nov 25 11:40:01 srv sshd[812]: Failed password for root from 198.51.100.9 port 22 ssh2\r\n")
	f.Add("Nov 25 11:40:01 srv /usr/sbin/sshd[812]: Failed password for root from 198.51.100.9 port 22 ssh2")
	f.Add("Failed password for root from 2001:db8::9 port 22 ssh2")
	f.Fuzz(func(t *testing.T, line string) {
		ev, ok, trusted := parseFileLine(line)
		if want := TrustedFileLine(line); trusted != want {
			t.Fatalf("%q: trusted %v, TrustedFileLine says %v", line, trusted, want)
		}
		if !trusted {
			if ok || ev != (Event{}) {
				t.Fatalf("%q: untrusted, yet an event %+v", line, ev)
			}
			return
		}
		wev, wok := ParseLine(line)
		if ok != wok || ev != wev {
			t.Fatalf("%q: parseFileLine = %+v, %v; ParseLine = %+v, %v", line, ev, ok, wev, wok)
		}
	})
}
