package xtenc

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// fakeSets numbers sets by the order they are asked for.
func fakeSets() SetIndex {
	m := map[string]uint16{}
	return func(name string, _ uint8) (uint16, error) {
		if strings.Contains(name, "missing") {
			return 0, fmt.Errorf("ipset %q does not exist", name)
		}
		if _, ok := m[name]; !ok {
			m[name] = uint16(len(m) + 1)
		}
		return m[name], nil
	}
}

func TestEncodeUnsupported(t *testing.T) {
	long := strings.Repeat("x", 254)
	for _, tc := range []struct {
		fam  uint8
		line string
	}{
		{unix.NFPROTO_IPV4, ``},
		{unix.NFPROTO_IPV4, `-I MOAT-INPUT 1 -j DROP`},
		{unix.NFPROTO_IPV4, `-A MOAT-INPUT`},
		{unix.NFPROTO_IPV4, `-A MOAT-INPUT -p tcp`},
		{unix.NFPROTO_IPV4, `-A MOAT-INPUT-WITH-A-NAME-OF-29-C -j DROP`},
		{unix.NFPROTO_IPV4, `-A "MOAT INPUT" -j DROP`},
		{unix.NFPROTO_IPV4, `-A MOAT-INPUT -j DROP extra`},
		{unix.NFPROTO_IPV4, `-A MOAT-INPUT -j DROP -j RETURN`},
		{unix.NFPROTO_IPV4, `-A MOAT-INPUT -j FOO`},
		{unix.NFPROTO_IPV4, `-A MOAT-INPUT -j standard`},
		{unix.NFPROTO_IPV4, `-A MOAT-INPUT -j NFLOG`},
		{unix.NFPROTO_IPV4, `-A MOAT-INPUT -j QUEUE`},
		{unix.NFPROTO_IPV4, `-A MOAT-INPUT -g MOAT-X`},
		{unix.NFPROTO_IPV4, `-A MOAT-INPUT ! -j DROP`},
		{unix.NFPROTO_IPV4, `-A MOAT-INPUT -j DROP !`},
		// Comments: hostile text is refused, never cut.
		{unix.NFPROTO_IPV4, "-A MOAT-INPUT -m comment --comment \"a\x00b\" -j DROP"},
		{unix.NFPROTO_IPV4, "-A MOAT-INPUT -m comment --comment \"a\nb\" -j DROP"},
		{unix.NFPROTO_IPV4, "-A MOAT-INPUT -m comment --comment \"a\tb\" -j DROP"},
		{unix.NFPROTO_IPV4, "-A MOAT-INPUT -m comment --comment \"a\x7fb\" -j DROP"},
		{unix.NFPROTO_IPV4, "-A MOAT-INPUT -m comment --comment \"a\xffb\" -j DROP"},
		{unix.NFPROTO_IPV4, "-A MOAT-INPUT -m comment --comment \"a\u0085b\" -j DROP"},
		{unix.NFPROTO_IPV4, `-A MOAT-INPUT -m comment --comment "` + long + `" -j DROP`},
		{unix.NFPROTO_IPV4, `-A MOAT-INPUT -m comment --comment "a\"b" -j DROP`},
		{unix.NFPROTO_IPV4, `-A MOAT-INPUT -m comment --comment "a\\b" -j DROP`},
		{unix.NFPROTO_IPV4, `-A MOAT-INPUT -m comment --comment "" -j DROP`},
		{unix.NFPROTO_IPV4, `-A MOAT-INPUT -m comment --comment "a" -m comment --comment "b" -j DROP`},
		{unix.NFPROTO_IPV4, `-A MOAT-INPUT -m comment --comment "a" -p tcp -j DROP`},
		{unix.NFPROTO_IPV4, `-A MOAT-INPUT -m comment --comment "a"b -j DROP`},
		{unix.NFPROTO_IPV4, `-A MOAT-INPUT -m comment --comment a"b" -j DROP`},
		{unix.NFPROTO_IPV4, `-A MOAT-INPUT -m comment --comment "ab -j DROP`},
		{unix.NFPROTO_IPV4, `-A MOAT-INPUT -m comment -j DROP`},
		{unix.NFPROTO_IPV4, `-A MOAT-INPUT -m comment --comment`},
		// Interfaces.
		{unix.NFPROTO_IPV4, `-A MOAT-INPUT -i abcdefghijklmnop -j DROP`},
		{unix.NFPROTO_IPV4, `-A MOAT-INPUT -i abcdefghijklmno+ -j DROP`},
		{unix.NFPROTO_IPV4, `-A MOAT-INPUT -i + -j DROP`},
		{unix.NFPROTO_IPV4, `-A MOAT-INPUT -i eth/0 -j DROP`},
		{unix.NFPROTO_IPV4, `-A MOAT-INPUT -i e+th -j DROP`},
		{unix.NFPROTO_IPV4, `-A MOAT-INPUT -i eth0 -i eth1 -j DROP`},
		{unix.NFPROTO_IPV4, `-A MOAT-INPUT -i ! eth0 -j DROP`},
		// Addresses.
		{unix.NFPROTO_IPV4, `-A MOAT-INPUT -s 192.0.2.1 -j DROP`},
		{unix.NFPROTO_IPV4, `-A MOAT-INPUT -s example.com -j DROP`},
		{unix.NFPROTO_IPV4, `-A MOAT-INPUT -s 2001:db8::/32 -j DROP`},
		{unix.NFPROTO_IPV6, `-A MOAT-INPUT -s 192.0.2.0/24 -j DROP`},
		{unix.NFPROTO_IPV6, `-A MOAT-INPUT -s ::ffff:192.0.2.1/128 -j DROP`},
		{unix.NFPROTO_IPV4, `-A MOAT-INPUT ! -s 0.0.0.0/0 -j DROP`},
		{unix.NFPROTO_IPV4, `-A MOAT-INPUT ! -s 192.0.2.0/24,198.51.100.0/24 -j DROP`},
		{unix.NFPROTO_IPV4, `-A MOAT-INPUT -s 192.0.2.0/24 -s 192.0.2.0/24 -j DROP`},
		{unix.NFPROTO_IPV4, `-A MOAT-INPUT ! -s 192.0.2.0/24 -d 192.0.2.1/32,192.0.2.2/32 -j DROP`},
		{unix.NFPROTO_IPV6, `-A MOAT-INPUT -s 2001:db8::/64,2001:db8:1::/64 ! -d 2001:db8::1/128 -j DROP`},
		{unix.NFPROTO_IPV4, `-A MOAT-INPUT -s 192.0.2.0/33 -j DROP`},
		{unix.NFPROTO_IPV4, `-A MOAT-INPUT -s 192.0.2.0/24,198.51.100.0/24 -j DROP`}, // Encode: two rules
		// Protocols and ports.
		{unix.NFPROTO_IPV4, `-A MOAT-INPUT ! -p tcp -j DROP`},
		{unix.NFPROTO_IPV4, `-A MOAT-INPUT -p 6 --dport 22 -j DROP`},
		{unix.NFPROTO_IPV4, `-A MOAT-INPUT -p sctp -j DROP`},
		{unix.NFPROTO_IPV4, `-A MOAT-INPUT -p 0 -j DROP`},
		{unix.NFPROTO_IPV4, `-A MOAT-INPUT -p 050 -j DROP`},
		{unix.NFPROTO_IPV4, `-A MOAT-INPUT -p 256 -j DROP`},
		{unix.NFPROTO_IPV6, `-A MOAT-INPUT -p icmp -j DROP`},
		{unix.NFPROTO_IPV4, `-A MOAT-INPUT -p ipv6-icmp -j DROP`},
		{unix.NFPROTO_IPV4, `-A MOAT-INPUT --dport 22 -j DROP`},
		{unix.NFPROTO_IPV4, `-A MOAT-INPUT -p tcp --dport 0 -j DROP`},
		{unix.NFPROTO_IPV4, `-A MOAT-INPUT -p tcp --dport 65536 -j DROP`},
		{unix.NFPROTO_IPV4, `-A MOAT-INPUT -p tcp --dport 5:3 -j DROP`},
		{unix.NFPROTO_IPV4, `-A MOAT-INPUT -p tcp --dport 22:22 -j DROP`},
		{unix.NFPROTO_IPV4, `-A MOAT-INPUT -p tcp --dport ssh -j DROP`},
		{unix.NFPROTO_IPV4, `-A MOAT-INPUT -p tcp ! --dport 22 -j DROP`},
		{unix.NFPROTO_IPV4, `-A MOAT-INPUT -p tcp --dport 22 --dport 23 -j DROP`},
		{unix.NFPROTO_IPV4, `-A MOAT-INPUT -p tcp -m tcp --dport 22 -j DROP`},
		{unix.NFPROTO_IPV4, `-A MOAT-INPUT -p tcp --dport 22 -m conntrack --ctstate NEW --sport 1 -j DROP`},
		{unix.NFPROTO_IPV4, `-A MOAT-INPUT -p tcp --syn -j DROP`},
		{unix.NFPROTO_IPV4, `-A MOAT-INPUT -p tcp -m multiport --sports 1,2 --dport 22 -j DROP`},
		{unix.NFPROTO_IPV4, `-A MOAT-INPUT -p tcp -m multiport --sports 1,2 --dports 3 -j DROP`},
		{unix.NFPROTO_IPV4, `-A MOAT-INPUT -m multiport --dports 1,2 -j DROP`},
		{unix.NFPROTO_IPV4, `-A MOAT-INPUT -p tcp -m multiport --dports 1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16 -j DROP`},
		{unix.NFPROTO_IPV4, `-A MOAT-INPUT -p tcp -m multiport --dports 1:2,3:4,5:6,7:8,9:10,11:12,13:14,15,16 -j DROP`},
		{unix.NFPROTO_IPV4, `-A MOAT-INPUT -p tcp -m multiport --ports 1,2 -j DROP`},
		{unix.NFPROTO_IPV4, `-A MOAT-INPUT -p icmp --icmp-type echo-request -j DROP`},
		{unix.NFPROTO_IPV4, `-A MOAT-INPUT -p icmp --icmp-type 3/1 -j DROP`},
		{unix.NFPROTO_IPV4, `-A MOAT-INPUT -p icmp --icmp-type 256 -j DROP`},
		{unix.NFPROTO_IPV4, `-A MOAT-INPUT -p icmp --icmpv6-type 1 -j DROP`},
		{unix.NFPROTO_IPV6, `-A MOAT-INPUT -p ipv6-icmp --icmp-type 1 -j DROP`},
		// Matches.
		{unix.NFPROTO_IPV4, `-A MOAT-INPUT -m state --state NEW -j DROP`},
		{unix.NFPROTO_IPV4, `-A MOAT-INPUT -m conntrack --ctstate NEW,BOGUS -j DROP`},
		{unix.NFPROTO_IPV4, `-A MOAT-INPUT -m conntrack --ctstate new -j DROP`},
		{unix.NFPROTO_IPV4, `-A MOAT-INPUT -m conntrack --ctstatus SEEN_REPLY -j DROP`},
		{unix.NFPROTO_IPV4, `-A MOAT-INPUT -m conntrack -j DROP`},
		{unix.NFPROTO_IPV4, `-A MOAT-INPUT -m conntrack --ctstate NEW --ctstate NEW -j DROP`},
		{unix.NFPROTO_IPV4, `-A MOAT-INPUT -m hl --hl-eq 255 -j DROP`},
		{unix.NFPROTO_IPV6, `-A MOAT-INPUT -m hl --hl-gt 1 -j DROP`},
		{unix.NFPROTO_IPV6, `-A MOAT-INPUT -m hl ! --hl-eq 1 -j DROP`},
		{unix.NFPROTO_IPV4, `-A MOAT-INPUT -m set --match-set abcdefghijabcdefghijabcdefghijab src -j DROP`},
		{unix.NFPROTO_IPV4, `-A MOAT-INPUT -m set --match-set moat-x -j DROP`},
		{unix.NFPROTO_IPV4, `-A MOAT-INPUT -m set --match-set moat-x src,dst,src -j DROP`},
		{unix.NFPROTO_IPV4, `-A MOAT-INPUT -m set --match-set moat-x source -j DROP`},
		{unix.NFPROTO_IPV4, `-A MOAT-INPUT -m set --match-set moat-x src --return-nomatch -j DROP`},
		{unix.NFPROTO_IPV4, `-A MOAT-INPUT -m set --match-set moat-x src --match-set moat-y src -j DROP`},
		{unix.NFPROTO_IPV4, `-A MOAT-INPUT -m addrtype --dst-type local -j DROP`},
		{unix.NFPROTO_IPV4, `-A MOAT-INPUT -m addrtype --dst-type LOCAL,UNICAST -j DROP`},
		{unix.NFPROTO_IPV4, `-A MOAT-INPUT -m addrtype --limit-iface-in --dst-type LOCAL -j DROP`},
		{unix.NFPROTO_IPV4, `-A MOAT-INPUT -m limit --limit 0/sec -j DROP`},
		{unix.NFPROTO_IPV4, `-A MOAT-INPUT -m limit --limit 3/fortnight -j DROP`},
		{unix.NFPROTO_IPV4, `-A MOAT-INPUT -m limit --limit 3 -j DROP`},
		{unix.NFPROTO_IPV4, `-A MOAT-INPUT -m limit --limit-burst 3 -j DROP`},
		{unix.NFPROTO_IPV4, `-A MOAT-INPUT -m limit --limit 20000/sec -j DROP`},
		{unix.NFPROTO_IPV4, `-A MOAT-INPUT -m hashlimit --hashlimit-above 5/sec --hashlimit-name x -j DROP`},
		{unix.NFPROTO_IPV4, `-A MOAT-INPUT -m hashlimit --hashlimit-upto 5/sec --hashlimit-burst 3 --hashlimit-mode srcip --hashlimit-name x --hashlimit-htable-expire 1000 -j DROP`},
		{unix.NFPROTO_IPV4, `-A MOAT-INPUT -m hashlimit --hashlimit-above 5/sec --hashlimit-burst 3 --hashlimit-mode dstip --hashlimit-name x --hashlimit-htable-expire 1000 -j DROP`},
		{unix.NFPROTO_IPV4, `-A MOAT-INPUT -m hashlimit --hashlimit-above 5/sec --hashlimit-burst 3 --hashlimit-mode srcip --hashlimit-name x/y --hashlimit-htable-expire 1000 -j DROP`},
		{unix.NFPROTO_IPV4, `-A MOAT-INPUT -m hashlimit --hashlimit-above 5/sec --hashlimit-burst 3 --hashlimit-mode srcip --hashlimit-name ` + strings.Repeat("n", 65) + ` --hashlimit-htable-expire 1000 -j DROP`},
		{unix.NFPROTO_IPV4, `-A MOAT-INPUT -m hashlimit --hashlimit-above 5000000/sec --hashlimit-burst 3 --hashlimit-mode srcip --hashlimit-name x --hashlimit-htable-expire 1000 -j DROP`},
		{unix.NFPROTO_IPV4, `-A MOAT-INPUT -m limit --limit 3/min --limit-burst 0 -j DROP`},
		{unix.NFPROTO_IPV4, `-A MOAT-INPUT -m limit --limit 3/min --limit-burst 10001 -j DROP`},
		{unix.NFPROTO_IPV4, `-A MOAT-INPUT -m limit --limit 3/min --limit-burst 05 -j DROP`},
		{unix.NFPROTO_IPV4, `-A MOAT-INPUT -m hashlimit --hashlimit-above 5/sec --hashlimit-burst 0 --hashlimit-mode srcip --hashlimit-name x --hashlimit-htable-expire 1000 -j DROP`},
		{unix.NFPROTO_IPV4, `-A MOAT-INPUT -m hashlimit --hashlimit-above 5/sec --hashlimit-burst 10001 --hashlimit-mode srcip --hashlimit-name x --hashlimit-htable-expire 1000 -j DROP`},
		{unix.NFPROTO_IPV4, `-A MOAT-INPUT -m hashlimit --hashlimit-above 5/sec --hashlimit-burst 4294967296 --hashlimit-mode srcip --hashlimit-name x --hashlimit-htable-expire 1000 -j DROP`},
		{unix.NFPROTO_IPV4, `-A MOAT-INPUT -m recent --set -j DROP`},
		{unix.NFPROTO_IPV4, `-A MOAT-INPUT -m tcp -j DROP`},
		// Targets.
		{unix.NFPROTO_IPV4, `-A MOAT-INPUT -j REJECT --reject-with icmp6-no-route`},
		{unix.NFPROTO_IPV6, `-A MOAT-INPUT -j REJECT --reject-with icmp-net-unreachable`},
		{unix.NFPROTO_IPV4, `-A MOAT-INPUT -j REJECT --reject-with tcp-reset`},
		{unix.NFPROTO_IPV4, `-A MOAT-INPUT -p udp -j REJECT --reject-with tcp-reset`},
		{unix.NFPROTO_IPV4, `-A MOAT-INPUT -j REJECT --reject-with port-unreach`},
		{unix.NFPROTO_IPV4, `-A MOAT-INPUT -j REJECT --reject-with icmp-echo-reply`},
		{unix.NFPROTO_IPV4, `-A MOAT-INPUT -j DROP --reject-with tcp-reset`},
		{unix.NFPROTO_IPV4, `-A MOAT-INPUT -j LOG`},
		{unix.NFPROTO_IPV4, `-A MOAT-INPUT -j LOG --log-prefix ""`},
		{unix.NFPROTO_IPV4, `-A MOAT-INPUT -j LOG --log-prefix "123456789012345678901234567890"`},
		{unix.NFPROTO_IPV4, "-A MOAT-INPUT -j LOG --log-prefix \"a\xffb\""},
		{unix.NFPROTO_IPV4, `-A MOAT-INPUT -j LOG --log-prefix "a" --log-level 8`},
		{unix.NFPROTO_IPV4, `-A MOAT-INPUT -j LOG --log-prefix "a" --log-level warn`},
		{unix.NFPROTO_IPV4, `-A MOAT-INPUT -j LOG --log-prefix "a" --log-uid`},
		{unix.NFPROTO_IPV4, `-A MOAT-INPUT -j LOG --log-prefix "a" --log-prefix "b"`},
		{unix.NFPROTO_IPV4, `-A MOAT-INPUT -j SET --del-set moat-x src`},
		{unix.NFPROTO_IPV4, `-A MOAT-INPUT -j SET --add-set moat-x`},
		{unix.NFPROTO_IPV4, `-A MOAT-INPUT -j SET --add-set moat-x src --timeout -1`},
		{unix.NFPROTO_IPV4, `-A MOAT-INPUT -j SET --add-set moat-x src --timeout 4294967295`},
		{unix.NFPROTO_IPV4, `-A MOAT-INPUT -j SET --add-set abcdefghijabcdefghijabcdefghijab src`},
		{unix.NFPROTO_IPV4, `-A MOAT-INPUT -j SET --add-set moat-x src --exist --exist`},
		{unix.NFPROTO_IPV4, `-A MOAT-INPUT -j SET --add-set moat-x src --map-set moat-y src`},
		// Families.
		{0, `-A MOAT-INPUT -j DROP`},
		{unix.NFPROTO_INET, `-A MOAT-INPUT -j DROP`},
	} {
		_, err := Encode(tc.fam, tc.line, fakeSets())
		if !errors.Is(err, ErrUnsupported) {
			t.Errorf("%q: %v, want ErrUnsupported", tc.line, err)
		}
	}
}

func TestEncodeSetErrors(t *testing.T) {
	// A set the kernel does not know: the lookup's error, as iptables
	// refuses such a rule.
	_, err := Encode(unix.NFPROTO_IPV4, `-A MOAT-INPUT -m set --match-set moat-missing src -j DROP`, fakeSets())
	if err == nil || errors.Is(err, ErrUnsupported) || !strings.Contains(err.Error(), "does not exist") {
		t.Errorf("missing set: %v", err)
	}
	_, err = Encode(unix.NFPROTO_IPV4, `-A MOAT-INPUT -j SET --add-set moat-missing src`, fakeSets())
	if err == nil || errors.Is(err, ErrUnsupported) {
		t.Errorf("missing set in SET: %v", err)
	}
	// No lookup given.
	if _, err := Encode(unix.NFPROTO_IPV4, `-A MOAT-INPUT -m set --match-set moat-x src -j DROP`, nil); !errors.Is(err, ErrUnsupported) {
		t.Errorf("nil SetIndex: %v", err)
	}
}

// exprNames lists a rule's expressions by name.
func exprNames(t *testing.T, b []byte) []string {
	t.Helper()
	var names []string
	if err := walk(b, func(typ uint16, v []byte) {
		if typ != nftaListElem {
			t.Errorf("attribute %d in the list", typ)
		}
		_ = walk(v, func(typ uint16, v []byte) {
			if typ == nftaExprName {
				names = append(names, cstr(v))
			}
		})
	}); err != nil {
		t.Fatal(err)
	}
	return names
}

func TestEncodeRule(t *testing.T) {
	r, err := Encode(unix.NFPROTO_IPV4, `-A MOAT-INPUT -i eth0 -s 192.0.2.0/24 -p tcp --dport 22 -m comment --comment "input:allow:1 é ssh's" -j RETURN`, nil)
	if err != nil {
		t.Fatal(err)
	}
	if r.Chain != "MOAT-INPUT" {
		t.Errorf("chain %q", r.Chain)
	}
	const c = "input:allow:1 é ssh's"
	want := append([]byte{0, byte(len(c) + 1)}, c+"\x00"...)
	if !bytes.Equal(r.UserData, want) {
		t.Errorf("user data %q, want %q", r.UserData, want)
	}
	got := strings.Join(exprNames(t, r.Exprs), " ")
	if got != "meta cmp meta cmp payload cmp payload cmp counter immediate" {
		t.Errorf("expressions %s", got)
	}
	compat := map[uint16][]byte{}
	if err := walk(r.Compat, func(typ uint16, v []byte) { compat[typ] = v }); err != nil || !bytes.Equal(compat[nftaRuleCompatProto], []byte{0, 0, 0, 6}) || !bytes.Equal(compat[nftaRuleCompatFlags], []byte{0, 0, 0, 0}) {
		t.Errorf("compat %x (%v)", r.Compat, err)
	}
	// No comment: no user data.
	r, err = Encode(unix.NFPROTO_IPV6, `-A MOAT-INPUT -j DROP`, nil)
	if err != nil || r.UserData != nil || strings.Join(exprNames(t, r.Exprs), " ") != "counter immediate" {
		t.Errorf("%+v %v", r, err)
	}
	// Lists of addresses: a rule per pair, sources first.
	line := `-A MOAT-INPUT -s 192.0.2.0/24,198.51.100.0/24 -d 203.0.113.1/32,203.0.113.2/32 -j DROP`
	if _, err := Encode(unix.NFPROTO_IPV4, line, nil); !errors.Is(err, ErrUnsupported) || !strings.Contains(err.Error(), "EncodeAll") {
		t.Errorf("Encode of 4 rules: %v", err)
	}
	rules, err := EncodeAll(unix.NFPROTO_IPV4, line, nil)
	if err != nil || len(rules) != 4 {
		t.Fatalf("EncodeAll: %d rules, %v", len(rules), err)
	}
	for i, pair := range [][2]string{{"192.0.2.0/24", "203.0.113.1/32"}, {"192.0.2.0/24", "203.0.113.2/32"}, {"198.51.100.0/24", "203.0.113.1/32"}, {"198.51.100.0/24", "203.0.113.2/32"}} {
		one, err := Encode(unix.NFPROTO_IPV4, "-A MOAT-INPUT -s "+pair[0]+" -d "+pair[1]+" -j DROP", nil)
		if err != nil || !bytes.Equal(one.Exprs, rules[i].Exprs) {
			t.Errorf("rule %d is not %v (%v)", i, pair, err)
		}
	}
}

// TestSplit: arguments as iptables-restore reads them; a backslash
// (an escape inside quotes for iptables-restore, never written by moat)
// and a quote inside a word are refused.
func TestSplit(t *testing.T) {
	for line, want := range map[string][]string{
		`-A X -m comment --comment "a b" -j Y`: {"-A", "X", "-m", "comment", "--comment", "a b", "-j", "Y"},
		"-A  X\t-j   Y ":                       {"-A", "X", "-j", "Y"},
		`-A X --comment "" -j Y`:               {"-A", "X", "--comment", "", "-j", "Y"},
		`-A X --comment "it's é" -j Y`:         {"-A", "X", "--comment", "it's é", "-j", "Y"},
		`-A X --comment "a\"b" -j Y`:           nil,
		`-A X --comment "a\\b" -j Y`:           nil,
		`-A X --comment a\b -j Y`:              nil,
		`-A X --comment a"b" -j Y`:             nil,
		`-A X --comment "a"b -j Y`:             nil,
		`-A X --comment "ab -j Y`:              nil,
	} {
		got, err := split(line)
		if want == nil {
			if !errors.Is(err, ErrUnsupported) {
				t.Errorf("split(%q) = %q, %v; want ErrUnsupported", line, got, err)
			}
			continue
		}
		if err != nil || strings.Join(got, "|") != strings.Join(want, "|") {
			t.Errorf("split(%q) = %q, %v; want %q", line, got, err, want)
		}
	}
}

// checkRule holds what every encoding must be: well-formed netlink, a
// counter before the verdict, user data within the kernel's limit.
func checkRule(t *testing.T, line string, r Rule) {
	t.Helper()
	names := exprNames(t, r.Exprs)
	if len(names) < 2 || names[len(names)-2] != "counter" || (names[len(names)-1] != "immediate" && names[len(names)-1] != "target") {
		t.Errorf("%q: expressions %v", line, names)
	}
	if len(r.UserData) > 256 {
		t.Errorf("%q: %d bytes of user data", line, len(r.UserData))
	}
	if r.UserData != nil {
		if n := int(r.UserData[1]); r.UserData[0] != 0 || n+2 != len(r.UserData) || r.UserData[len(r.UserData)-1] != 0 || bytes.IndexByte(r.UserData[2:], 0) != n-1 {
			t.Errorf("%q: user data %q", line, r.UserData)
		}
		if !strings.Contains(line, string(r.UserData[2:len(r.UserData)-1])) {
			t.Errorf("%q: comment %q is not the line's", line, r.UserData)
		}
	}
	if _, err := netlink.UnmarshalAttributes(r.Compat); err != nil {
		t.Errorf("%q: compat %x: %v", line, r.Compat, err)
	}
}

func FuzzEncode(f *testing.F) {
	for _, fam := range []uint8{unix.NFPROTO_IPV4, unix.NFPROTO_IPV6} {
		for _, l := range shapes(fam) {
			f.Add(fam, l)
		}
	}
	f.Add(uint8(unix.NFPROTO_IPV4), "-A X -m comment --comment \"\xff\xfe\" -j DROP")
	f.Fuzz(func(t *testing.T, fam uint8, line string) {
		rules, err := EncodeAll(fam, line, fakeSets())
		if err != nil {
			if len(rules) != 0 {
				t.Errorf("%q: rules and an error", line)
			}
			return
		}
		if len(rules) == 0 {
			t.Fatalf("%q: no rule and no error", line)
		}
		for _, r := range rules {
			checkRule(t, line, r)
		}
		// The same line, the same bytes.
		again, err := EncodeAll(fam, line, fakeSets())
		if err != nil || len(again) != len(rules) || !bytes.Equal(again[0].Exprs, rules[0].Exprs) {
			t.Errorf("%q: encoded differently the second time (%v)", line, err)
		}
	})
}

// BenchmarkEncode encodes the hand-written shapes of both families (about
// a hundred lines: what a rule change of a larger policy re-encodes), and
// as a baseline splits the same lines into arguments.
func BenchmarkEncode(b *testing.B) {
	type l struct {
		fam  uint8
		line string
	}
	var lines []l
	for _, fam := range []uint8{unix.NFPROTO_IPV4, unix.NFPROTO_IPV6} {
		for _, s := range shapes(fam) {
			lines = append(lines, l{fam, s})
		}
	}
	sets := fakeSets()
	b.Run("split", func(b *testing.B) {
		for b.Loop() {
			for _, x := range lines {
				_, _ = split(x.line)
			}
		}
	})
	b.Run("encode", func(b *testing.B) {
		for b.Loop() {
			for _, x := range lines {
				if _, err := EncodeAll(x.fam, x.line, sets); err != nil {
					b.Fatal(err)
				}
			}
		}
	})
	b.ReportMetric(float64(len(lines)), "lines")
}
