package cli

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/netip"
	"sort"
	"strings"
	"syscall"
	"testing"
	"text/tabwriter"
	"time"

	"github.com/moat-fw/moat/internal/ruleset"
	"github.com/moat-fw/moat/internal/termtext"
)

// banJSON and the two printers below are how 'moat bans' printed its
// list before it was streamed (fifth session): the reference the streamed
// output must equal byte for byte.
type banJSON struct {
	Address     string `json:"address"`
	Reason      string `json:"reason"`
	SecondsLeft int64  `json:"seconds_left"`
	BanCount    int    `json:"ban_count"`
}

func oldBanList(bans []ruleset.Ban, counts map[netip.Addr]int) []banJSON {
	sort.Slice(bans, func(i, j int) bool { return bans[i].Addr.Less(bans[j].Addr) })
	list := make([]banJSON, 0, len(bans))
	for _, ban := range bans {
		if ban.Reason == "" {
			ban.Reason = ruleset.ReasonPortscan
		}
		list = append(list, banJSON{Address: ban.Addr.String(), Reason: ban.Reason, SecondsLeft: int64(ban.Expires.Seconds()), BanCount: counts[ban.Addr]})
	}
	return list
}

func oldBanTable(w io.Writer, list []banJSON) error {
	tw := tabwriter.NewWriter(w, 2, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "ADDRESS\tTIME LEFT\tBANS\tREASON")
	for _, l := range list {
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\n", l.Address, time.Duration(l.SecondsLeft)*time.Second, l.BanCount, termtext.Printable(l.Reason))
	}
	return tw.Flush()
}

func oldBanJSON(w io.Writer, list []banJSON) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(list)
}

// terminalEscapes are the characters of hostileBans' reasons that
// encoding/json printed as they are and a terminal takes as controls:
// 'moat bans --json' escapes them (TestBanJSONNoTerminalControls).
var terminalEscapes = strings.NewReplacer("\u0085", `\u0085`, "\u009b", `\u009b`, "\u202e", `\u202e`,
	"\u2066", `\u2066`, "\u2069", `\u2069`, "\u200f", `\u200f`)

// hostileBans are bans whose reasons (element comments anyone with nft
// or ipset can write) hold escape sequences, line breaks, tabs, bidi
// controls, HTML, quotes, invalid UTF-8 and wide characters, in no order.
func hostileBans(n int, seed uint64) ([]ruleset.Ban, map[netip.Addr]int) {
	r := rand.New(rand.NewPCG(seed, 1))
	reasons := []string{
		"", "manual", "manual: ok", "guard: maxretry reached, last failed_password",
		"x\x1b]0;owned\x07\x1b[2J\n203.0.113.1  1h  1  manual\u202e",
		"tab\there\tand\tthere", "<script>&amp;\"quoted\"</script>", "bad \xff\xfe utf8",
		"wide: 日本語 ✓ café", "\u2066isolate\u2069 \u200fmark", "\u0085\u009bC1", strings.Repeat("long ", 60),
		"user <bob>\r\nfake row", "\\back\\slash", "\x00nul",
	}
	var bans []ruleset.Ban
	counts := map[netip.Addr]int{}
	for i := 0; i < n; i++ {
		var a netip.Addr
		if r.IntN(2) == 0 {
			a = netip.AddrFrom4([4]byte{198, 51, byte(100 + r.IntN(2)), byte(r.IntN(256))})
		} else {
			a = netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 0, byte(r.IntN(3)), 0, 0, 0, 0, 0, 0, byte(r.IntN(256)), byte(r.IntN(256)), 0xff, byte(r.IntN(256))})
		}
		if _, dup := counts[a]; dup {
			continue // a set holds each address once
		}
		counts[a] = r.IntN(3) * r.IntN(100000)
		left := []time.Duration{0, 999 * time.Millisecond, time.Second, 59 * time.Minute, 400 * 24 * time.Hour, time.Duration(r.Int64N(int64(48 * time.Hour)))}[r.IntN(6)]
		// Read back, a ban with a timeout has it (the listing's bytes
		// are those of bans that run out; TestBanPermanent has the rest).
		bans = append(bans, ruleset.Ban{Addr: a, Timeout: time.Hour, Expires: left, Reason: reasons[r.IntN(len(reasons))]})
	}
	return bans, counts
}

// The streamed table and JSON are byte for byte what text/tabwriter and
// encoding/json printed, with hostile reasons, in every size from none
// to thousands (column widths set by one long cell).
func TestBanListingSameBytes(t *testing.T) {
	for _, n := range []int{0, 1, 2, 7, 100, 3000} {
		for seed := uint64(1); seed <= 3; seed++ {
			bans, counts := hostileBans(n, seed)
			old := oldBanList(append([]ruleset.Ban(nil), bans...), counts)
			rows := banRows(bans, counts)
			var want, got bytes.Buffer
			if err := oldBanJSON(&want, old); err != nil {
				t.Fatal(err)
			}
			if err := writeBanJSON(&got, rows); err != nil {
				t.Fatal(err)
			}
			if want := terminalEscapes.Replace(want.String()); want != got.String() {
				t.Errorf("n=%d seed=%d: JSON differs:\nwant %.400q\ngot  %.400q", n, seed, want, got.String())
			}
			if n == 0 {
				continue // 'No bans', printed by the command
			}
			want.Reset()
			got.Reset()
			if err := oldBanTable(&want, old); err != nil {
				t.Fatal(err)
			}
			if err := writeBanRows(&got, rows); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(want.Bytes(), got.Bytes()) {
				t.Errorf("n=%d seed=%d: table differs:\nwant %.600q\ngot  %.600q", n, seed, want.String(), got.String())
			}
		}
	}
}

// A ban's reason is an element comment anyone with nft or ipset can
// write ('nft add element inet moat ban4 { 192.0.2.9 comment "..." }'):
// 'moat bans' prints no escape sequence of it, and no line break or tab
// that would fake a row or a column of the table.
func TestBanTableHostileReason(t *testing.T) {
	var out strings.Builder
	bans := []ruleset.Ban{
		{Addr: netip.MustParseAddr("192.0.2.9"), Reason: "x\x1b]0;owned\x07\x1b[2J\n203.0.113.1 \t 1h  1  manual\u202e", Expires: time.Minute},
		{Addr: netip.MustParseAddr("2001:db8::9"), Reason: "manual: ok"},
	}
	if err := writeBanRows(&out, banRows(bans, map[netip.Addr]int{bans[1].Addr: 2})); err != nil {
		t.Fatal(err)
	}
	got := out.String()
	if strings.ContainsAny(got, "\x1b\x07\u202e\t") {
		t.Errorf("control characters printed: %q", got)
	}
	if lines := strings.Count(got, "\n"); lines != 3 {
		t.Errorf("%d lines, want a header and 2 rows: %q", lines, got)
	}
	if !strings.Contains(got, "manual: ok") {
		t.Errorf("a plain reason is not printed as it is: %q", got)
	}
}

// A ban's reason in 'moat bans --json' reaches the admin's terminal as
// no control character (a C1 CSI, DEL, a bidi override: encoding/json
// leaves them as they are) while a JSON reader reads it unchanged.
func TestBanJSONNoTerminalControls(t *testing.T) {
	reasons := []string{"x\u009b2J\u0085y", "evil\u202egnp.exe\u2066x\u2069\u200f\u061c", "del\x7f", "esc\x1b[2J\n", "<b>&\u2028", "café ✓"}
	var bans []ruleset.Ban
	for i, r := range reasons {
		bans = append(bans, ruleset.Ban{Addr: netip.AddrFrom4([4]byte{192, 0, 2, byte(i)}), Reason: r, Expires: time.Minute})
	}
	var out bytes.Buffer
	if err := writeBanJSON(&out, banRows(bans, nil)); err != nil {
		t.Fatal(err)
	}
	for _, r := range out.String() {
		if r != '\n' && termtext.Dropped(r) {
			t.Errorf("%U printed as it is: %q", r, out.String())
		}
	}
	var list []banJSON
	if err := json.Unmarshal(out.Bytes(), &list); err != nil {
		t.Fatal(err)
	}
	for i, l := range list {
		if l.Reason != reasons[i] {
			t.Errorf("reason %q read back as %q", reasons[i], l.Reason)
		}
	}
}

// pipeGone is a reader that went away ('moat bans --all | head' with
// SIGPIPE ignored): every write fails with EPIPE after the first few.
type pipeGone struct{ n int }

func (p *pipeGone) Write(b []byte) (int, error) {
	if p.n -= len(b); p.n < 0 {
		return 0, &pipeErr{}
	}
	return len(b), nil
}

type pipeErr struct{}

func (*pipeErr) Error() string { return "write |1: broken pipe" }
func (*pipeErr) Unwrap() error { return syscall.EPIPE }

// A listing whose reader went away ends quietly: no error printed, the
// exit code of a command SIGPIPE ended; another write error is printed.
func TestBanListingBrokenPipeQuiet(t *testing.T) {
	bans, counts := hostileBans(5000, 7)
	rows := banRows(bans, counts)
	for name, write := range map[string]func(io.Writer, []banRow) error{"table": writeBanRows, "json": writeBanJSON} {
		err := quietPipe(write(&pipeGone{n: 100}, rows))
		var ee *exitError
		if !errors.As(err, &ee) || ee.code != exitBrokenPipe || !errors.Is(err, errSilent) {
			t.Errorf("%s: %v, want a silent exit %d", name, err, exitBrokenPipe)
		}
	}
	other := errors.New("no space left on device")
	if err := quietPipe(other); err != other {
		t.Errorf("another write error became %v", err)
	}
	var stderr bytes.Buffer
	code := run(t.Context(), []string{"bans", "--no-such-flag"}, io.Discard, &stderr, nil)
	if code == 0 || stderr.Len() == 0 {
		t.Errorf("a real error is still printed: code %d, %q", code, stderr.String())
	}
}

// A ban without a timeout (an element added by hand, 'ipset add moat-ban4
// ADDR timeout 0') never runs out: the table says "permanent" and the
// JSON "permanent": true beside a seconds_left of 0. Both said 0 s left,
// as if it ran out at once. One read back with its timeout and nothing
// left (nft, a ban running out now) still shows 0s.
func TestBanPermanent(t *testing.T) {
	bans := []ruleset.Ban{
		{Addr: netip.MustParseAddr("192.0.2.7"), Reason: "by hand"},
		{Addr: netip.MustParseAddr("192.0.2.8"), Timeout: time.Hour, Reason: "running out"},
		{Addr: netip.MustParseAddr("192.0.2.9"), Expires: time.Minute, Reason: "ipset"},
	}
	rows := banRows(bans, nil)
	var table, js strings.Builder
	if err := writeBanRows(&table, rows); err != nil {
		t.Fatal(err)
	}
	if err := writeBanJSON(&js, rows); err != nil {
		t.Fatal(err)
	}
	want := "ADDRESS    TIME LEFT  BANS  REASON\n" +
		"192.0.2.7  permanent  0     by hand\n" +
		"192.0.2.8  0s         0     running out\n" +
		"192.0.2.9  1m0s       0     ipset\n"
	if table.String() != want {
		t.Errorf("table:\n%s\nwant:\n%s", table.String(), want)
	}
	var got []map[string]any
	if err := json.Unmarshal([]byte(js.String()), &got); err != nil {
		t.Fatalf("%v: %s", err, js.String())
	}
	if len(got) != 3 || got[0]["permanent"] != true || got[0]["seconds_left"] != float64(0) ||
		got[1]["permanent"] != nil || got[2]["seconds_left"] != float64(60) {
		t.Errorf("JSON: %s", js.String())
	}
}
