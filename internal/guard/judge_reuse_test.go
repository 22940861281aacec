package guard

import (
	"fmt"
	"testing"
	"time"
)

// A connection's record outlives its end (so a second closing line does
// not count twice); a later connection with the same key (sshd -E: the
// same client address and port, which a client chooses; syslog: a reused
// PID with the same client address and port) is a new connection and
// counts again. Before, the old record swallowed it: an attacker binding
// one source port (closing with RST, so the port is free at once) counted
// once, however many connections he made, at sshd's LogLevel INFO (which
// logs no "Connection from" line to start a new record).
func TestJudgeSameKeyAfterEndIsANewConnection(t *testing.T) {
	for _, tag := range []string{"", "Nov 25 11:40:01 srv sshd[77]: "} {
		for name, conn := range map[string][]string{
			"keys then closed": {
				"Failed publickey for root from 203.0.113.9 port 40000 ssh2: ED25519 SHA256:a",
				"Failed publickey for root from 203.0.113.9 port 40000 ssh2: ED25519 SHA256:b",
				"Connection reset by authenticating user root 203.0.113.9 port 40000 [preauth]",
			},
			"too many keys": {
				"Failed publickey for root from 203.0.113.9 port 40000 ssh2: ED25519 SHA256:a",
				"error: maximum authentication attempts exceeded for root from 203.0.113.9 port 40000 ssh2 [preauth]",
				"Disconnecting authenticating user root 203.0.113.9 port 40000: Too many authentication failures [preauth]",
			},
			"passwords": {
				"Failed password for root from 203.0.113.9 port 40000 ssh2",
				"Connection closed by authenticating user root 203.0.113.9 port 40000 [preauth]",
			},
		} {
			j := NewJudge(nil)
			t0 := time.Unix(1e9, 0)
			var per []int
			for i := 0; i < 5; i++ {
				var lines []string
				for _, l := range conn {
					lines = append(lines, tag+l)
				}
				per = append(per, len(feed(j, t0.Add(time.Duration(i)*time.Second), lines...)))
			}
			for i, n := range per {
				if n != per[0] || n == 0 {
					t.Errorf("%q, %s: connection %d counted %d time(s); each counts alike: %v", tag, name, i+1, n, per)
					break
				}
			}
		}
	}
}

// A login from an address and port, then (after it closed) a connection
// from the same address and port offering only wrong keys: the login does
// not excuse the later connection's keys.
func TestJudgeLoginDoesNotExcuseALaterConnection(t *testing.T) {
	j := NewJudge(nil)
	t0 := time.Unix(1e9, 0)
	p := "203.0.113.10 port 40000"
	got := feed(j, t0,
		"Accepted publickey for root from "+p+" ssh2: ED25519 SHA256:ok",
		"Received disconnect from "+p+":11: disconnected by user",
		"Disconnected from user root "+p)
	if len(got) != 0 {
		t.Fatalf("login counted: %+v", got)
	}
	for i := 0; i < 3; i++ {
		got = feed(j, t0.Add(time.Duration(i+1)*time.Second),
			"Failed publickey for root from "+p+" ssh2: ED25519 SHA256:a",
			"Failed publickey for root from "+p+" ssh2: ED25519 SHA256:b",
			"Connection closed by authenticating user root "+p+" [preauth]")
		if len(got) != 1 || got[0].Kind != FailedPublickey {
			t.Fatalf("connection %d with wrong keys after a login from the same port: counted %+v", i+1, fmt.Sprint(got))
		}
	}
}
