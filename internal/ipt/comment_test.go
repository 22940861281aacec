package ipt

import "testing"

func TestCommentOf(t *testing.T) {
	for line, want := range map[string]string{
		`-A MOAT-INPUT -p tcp -m tcp --dport 22 -m comment --comment rule:1 -j ACCEPT`: "rule:1",
		`-A MOAT-INPUT -m comment --comment "log: allow log 22/tcp" -j LOG`:            "log: allow log 22/tcp",
		`-A MOAT-INPUT -m comment --comment "unterminated -j ACCEPT`:                   "",
		`-A MOAT-INPUT -p tcp -j ACCEPT`:                                               "",
		`-A MOAT-INPUT -m comment --comment default:input`:                             "default:input",
		`-A MOAT-INPUT -m comment --comment "" -j DROP`:                                "",
		`-A MOAT-INPUT -m comment --comment "a" -m comment --comment "b" -j DROP`:      "a",
	} {
		if got := CommentOf(line); got != want {
			t.Errorf("CommentOf(%q) = %q, want %q", line, got, want)
		}
	}
}
