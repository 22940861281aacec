package cli

import (
	"bytes"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"

	"github.com/moat-fw/moat/internal/blocklist"
)

// fakeLine is what hostile text tries to print as a line of its own.
const fakeLine = "moat: warning: FAKE"

// noFakeLine fails if a line of out starts with fakeLine: text others
// wrote, printed inside one of moat's lines, started a line there.
func noFakeLine(t *testing.T, what string, out []byte) {
	t.Helper()
	for _, l := range strings.FieldsFunc(string(out), func(r rune) bool {
		return r == '\n' || r == '\r' || r == '\v' || r == '\f' || r == 0x85 || r == 0x2028 || r == 0x2029
	}) {
		if strings.HasPrefix(strings.TrimSpace(l), fakeLine) {
			t.Errorf("%s: hostile text made a line of its own:\n%s", what, out)
			return
		}
	}
}

// A blocklist's last problem (a server's certificate names, a record
// anyone who could write the state directory wrote) printed by 'moat
// blocklist list' keeps its line breaks escaped on its line.
func TestBlocklistListLastProblemOnOneLine(t *testing.T) {
	dir := t.TempDir()
	listFile := filepath.Join(dir, "bad.netset")
	for _, br := range []string{"\n", "\r", "\v", "\f", "\u0085", "\u2028", "\u2029", "\r\n"} {
		setup := func(stateDir string) {
			m := blocklist.Meta{Name: "bad", Source: "file", Where: listFile, SHA256: "00", LastError: "x509: certificate is valid for evil" + br + fakeLine + ", not lists.example"}
			if err := blocklist.WriteMeta(stateDir, m); err != nil {
				t.Fatal(err)
			}
		}
		out, errOut, _ := runHostile(t, "allow 22/tcp\nblocklist bad file "+listFile+"\n", setup, "blocklist", "list")
		noFakeLine(t, "blocklist list", out)
		noFakeLine(t, "blocklist list (stderr)", errOut)
		if !bytes.Contains(out, []byte("evil")) || !bytes.Contains(out, []byte(fakeLine)) {
			t.Errorf("the last problem is not shown whole:\n%s", out)
		}
	}
}

// A ban's reason (an element comment anyone with nft or ipset wrote) in
// 'moat bans': every line break escaped on the ban's row, which the table
// writes past the terminal filter.
func TestBanReasonOnOneLine(t *testing.T) {
	for _, br := range []string{"\n", "\r", "\v", "\f", "\u0085", "\u2028", "\u2029"} {
		var out bytes.Buffer
		rows := []banRow{{addr: netip.MustParseAddr("192.0.2.9"), reason: "sshd" + br + fakeLine, left: 60, banCount: 1}}
		if err := writeBanRows(&out, rows); err != nil {
			t.Fatal(err)
		}
		noFakeLine(t, "bans", out.Bytes())
		if strings.Count(out.String(), "\n") != 2 {
			t.Errorf("%q: not one row:\n%s", br, out.String())
		}
	}
}

// A url list whose first update was killed after its copy was saved but
// before its metadata (the copy vouched for as 'saving'): an apply loads
// it, and 'blocklist list' showed it as "not fetched yet", 0 networks. It
// shows the copy's networks and says what is left to do.
func TestBlocklistListFirstSaveInterrupted(t *testing.T) {
	const url = "https://lists.example/drop.txt"
	setup := func(stateDir string) {
		m := blocklist.Meta{Name: "drop", Source: "url", Where: url, Saving: "00", Networks: 3, V4: 2, V6: 1}
		if err := blocklist.WriteMeta(stateDir, m); err != nil {
			t.Fatal(err)
		}
	}
	out, errOut, _ := runHostile(t, "allow 22/tcp\nblocklist drop url "+url+"\n", setup, "blocklist", "list")
	if !strings.Contains(strings.Join(strings.Fields(string(out)), " "), "drop 3 never never "+url) {
		t.Errorf("the saved copy's networks are not shown:\n%s%s", out, errOut)
	}
	if bytes.Contains(out, []byte("not fetched")) || !bytes.Contains(out, []byte("first update was interrupted")) {
		t.Errorf("blocklist list of a first save killed before its metadata:\n%s%s", out, errOut)
	}
}
