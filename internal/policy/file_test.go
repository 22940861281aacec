package policy

import (
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

const sample = `# moat policy
backend nftables

default deny incoming   # drop by default
allow 22/tcp comment 'admins'

# web
allow 80,443/tcp
deny from 203.0.113.0/24
`

func TestDocumentPolicy(t *testing.T) {
	d := NewDocument("moat.conf", []byte(sample))
	p, err := d.Policy(testServices)
	if err != nil {
		t.Fatal(err)
	}
	if p.Backend != BackendNftables || p.Defaults[In] != Deny || p.Defaults[Out] != Allow {
		t.Fatalf("settings: %+v", p)
	}
	if p.NumRules() != 3 {
		t.Fatalf("rules: %d", p.NumRules())
	}
	if r := p.Rule(0); r.Pos.Line != 5 || r.Text != "allow 22/tcp comment 'admins'" {
		t.Fatalf("rule 1 at %+v text %q", r.Pos, r.Text)
	}
	if p.DefaultPos[In].Line != 4 {
		t.Fatalf("default position %+v", p.DefaultPos[In])
	}
}

func TestDocumentErrorsNameEveryLine(t *testing.T) {
	d := NewDocument("/etc/moat/moat.conf", []byte("allow 22/tcp\nallow 99999\n\ndeny from nowhere\nfrobnicate\n"))
	_, err := d.Policy(testServices)
	if err == nil {
		t.Fatal("invalid file accepted")
	}
	msg := err.Error()
	for _, want := range []string{
		"/etc/moat/moat.conf:2:7: bad port '99999'",
		"/etc/moat/moat.conf:4:11: bad address 'nowhere'",
		"/etc/moat/moat.conf:5:1: unknown statement 'frobnicate'",
	} {
		if !strings.Contains(msg, want) {
			t.Errorf("missing %q in:\n%s", want, msg)
		}
	}
}

func TestDocumentEdits(t *testing.T) {
	d := NewDocument("moat.conf", []byte(sample))
	d.AppendLine("allow 53")
	if err := d.InsertRule(1, "deny from 198.51.100.7"); err != nil {
		t.Fatal(err)
	}
	if err := d.InsertRule(9, "allow 1/tcp"); err == nil {
		t.Fatal("insert past the end accepted")
	}
	d.SetDefault(In, Reject)
	d.SetDefault(Out, Deny)
	line, err := d.DeleteRule(3)
	if err != nil || line != "allow 80,443/tcp" {
		t.Fatalf("delete 3: %q %v", line, err)
	}
	want := `# moat policy
backend nftables

default reject incoming
default deny outgoing
deny from 198.51.100.7
allow 22/tcp comment 'admins'

# web
deny from 203.0.113.0/24
allow 53
`
	if got := string(d.Bytes()); got != want {
		t.Fatalf("got:\n%s\nwant:\n%s", got, want)
	}
	r, _ := parseLine("allow 53/tcp")
	if n := d.FindRule(r.Rule, testServices); n != 0 {
		t.Fatalf("found %d for a rule not there", n)
	}
	r, _ = parseLine("allow domain")
	if n := d.FindRule(r.Rule, testServices); n != 4 {
		t.Fatalf("allow domain is rule %d, want 4", n)
	}
}

func TestDocumentWriteAtomic(t *testing.T) {
	dir := t.TempDir()
	name := filepath.Join(dir, "sub", "moat.conf")
	d, err := ReadDocument(name)
	if err != nil || len(d.Lines) != 0 {
		t.Fatalf("missing file: %v %v", d, err)
	}
	d.AppendLine("allow 22/tcp")
	if err := d.Write(); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(name)
	if err != nil || string(data) != "allow 22/tcp\n" {
		t.Fatalf("%q %v", data, err)
	}
	entries, _ := os.ReadDir(filepath.Dir(name))
	if len(entries) != 1 {
		t.Fatalf("temporary files left: %v", entries)
	}
}

func TestQuoteArgsRoundTrip(t *testing.T) {
	args := []string{"allow", "22/tcp", "comment", "ssh for admins"}
	line := QuoteArgs(args)
	toks, err := Lex(line)
	if err != nil || len(toks) != 4 || toks[3].Text != "ssh for admins" {
		t.Fatalf("%q -> %+v %v", line, toks, err)
	}
}

// An edit keeps the file as the admin set it up: its mode, its owner, and
// a symbolic link to it (written through, never replaced).
func TestWriteKeepsModeOwnerAndLink(t *testing.T) {
	dir := t.TempDir()
	real := filepath.Join(dir, "etc-real", "moat.conf")
	if err := os.MkdirAll(filepath.Dir(real), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(real, []byte("allow 22/tcp\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if os.Geteuid() == 0 {
		if err := os.Chown(real, 65534, 65534); err != nil {
			t.Fatal(err)
		}
	}
	// moat.conf → ../etc-real/moat.conf through a linked directory.
	if err := os.Symlink("etc-real", filepath.Join(dir, "etc-link")); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "conf", "moat.conf")
	if err := os.MkdirAll(filepath.Dir(link), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("../etc-link/moat.conf", link); err != nil {
		t.Fatal(err)
	}
	d, err := ReadDocument(link)
	if err != nil {
		t.Fatal(err)
	}
	d.AppendLine("allow 80/tcp")
	if err := d.Write(); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Lstat(link); err != nil || fi.Mode()&os.ModeSymlink == 0 {
		t.Fatalf("the link was replaced: %v %v", fi.Mode(), err)
	}
	data, _ := os.ReadFile(real)
	if string(data) != "allow 22/tcp\nallow 80/tcp\n" {
		t.Fatalf("target holds %q", data)
	}
	fi, _ := os.Stat(real)
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("mode %v, want 0600", fi.Mode().Perm())
	}
	if st := fi.Sys().(*syscall.Stat_t); os.Geteuid() == 0 && (st.Uid != 65534 || st.Gid != 65534) {
		t.Errorf("owner %d:%d, want 65534:65534", st.Uid, st.Gid)
	}
	for _, d := range []string{filepath.Dir(real), filepath.Dir(link)} {
		if entries, _ := os.ReadDir(d); len(entries) != 1 {
			t.Errorf("temporary files left in %s: %v", d, entries)
		}
	}

	// A dangling link creates its target; a loop is an error, not a hang.
	dangling := filepath.Join(dir, "dangling.conf")
	if err := os.Symlink("new/target.conf", dangling); err != nil {
		t.Fatal(err)
	}
	if err := WriteFile(dangling, []byte("allow 22/tcp\n")); err != nil {
		t.Fatal(err)
	}
	if data, _ := os.ReadFile(filepath.Join(dir, "new/target.conf")); string(data) != "allow 22/tcp\n" {
		t.Errorf("dangling link target holds %q", data)
	}
	if fi, _ := os.Stat(filepath.Join(dir, "new/target.conf")); fi.Mode().Perm() != 0o644 {
		t.Errorf("new file mode %v", fi.Mode().Perm())
	}
	loop := filepath.Join(dir, "loop")
	if err := os.Symlink("loop", loop); err != nil {
		t.Fatal(err)
	}
	if err := WriteFile(loop, nil); err == nil || !strings.Contains(err.Error(), "symbolic links") {
		t.Errorf("loop: %v", err)
	}
	// A directory is not a policy file.
	if err := WriteFile(filepath.Dir(real), nil); err == nil {
		t.Errorf("wrote over a directory")
	}
}

// A FIFO, a device or a directory in the policy file's place is refused at
// once: opened blocking, a FIFO hung every command (and the lock it holds,
// and the rollback that reads the file) for good, deaf to SIGTERM.
func TestReadDocumentNotRegular(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "link")
	if err := os.Symlink(fifo, link); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{fifo, link, "/dev/zero", dir} {
		done := make(chan error, 1)
		go func() {
			_, err := ReadDocument(name)
			done <- err
		}()
		select {
		case err := <-done:
			if err == nil || !strings.Contains(err.Error(), "not a regular file") {
				t.Errorf("%s: %v", name, err)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("ReadDocument(%s) hangs", name)
		}
	}
	if d, err := ReadDocument(filepath.Join(dir, "missing")); err != nil || len(d.Lines) != 0 {
		t.Errorf("missing file: %v %v", d, err)
	}
}

// The bytes read stand for the document's Bytes wherever SameAsBytes
// says so (readPolicy keeps them instead of a copy): texts with and
// without a last newline, blank lines, carriage returns, a lone newline.
func TestSameAsBytes(t *testing.T) {
	for _, s := range []string{"", "\n", "\n\n", "a", "a\n", "a\n\n", "\na\n", "a\r\n", "a\nb", "a\nb\n", "a\n\nb\n\n\n", " \n", "\r"} {
		checkSameAsBytes(t, []byte(s))
	}
	got, data, err := ReadDocumentData(filepath.Join(t.TempDir(), "none"))
	if err != nil || data != nil || got.Lines != nil {
		t.Fatalf("a missing file: %v, %q, %v", got, data, err)
	}
	p := filepath.Join(t.TempDir(), "moat.conf")
	text := "default deny incoming\nallow 22/tcp\ndeny from 192.0.2.1\n"
	if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	d, data, err := ReadDocumentData(p)
	if err != nil || string(data) != text || !SameAsBytes(d, data) || d.Text() != text {
		t.Fatalf("ReadDocumentData = %q, %q, %v", d.Lines, data, err)
	}
}

func checkSameAsBytes(t *testing.T, data []byte) {
	t.Helper()
	d := NewDocument("f", data)
	if SameAsBytes(d, data) && !bytes.Equal(d.Bytes(), data) {
		t.Fatalf("%q: SameAsBytes, but Bytes() = %q", data, d.Bytes())
	}
	if !SameAsBytes(d, data) && len(d.Lines) > 0 && len(data) > 0 && data[len(data)-1] == '\n' {
		t.Fatalf("%q: not SameAsBytes", data)
	}
}

func FuzzSameAsBytes(f *testing.F) {
	for _, s := range []string{"", "\n", "a\n", "a", "a\n\n", "deny from 192.0.2.1\r\n"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		checkSameAsBytes(t, data)
		d := NewDocument("f", data)
		// The lines are strings.Split's.
		if text := strings.TrimSuffix(string(data), "\n"); len(data) > 0 && text != "" && !slices.Equal(d.Lines, strings.Split(text, "\n")) {
			t.Fatalf("%q: lines %q", data, d.Lines)
		}
		// Text and Bytes agree (PrepareText writes the one for the other).
		if d.Text() != string(d.Bytes()) {
			t.Fatalf("%q: Text %q, Bytes %q", data, d.Text(), d.Bytes())
		}
	})
}

// TestReadDocumentDataEditsLeaveBytes: the lines of a document read with
// ReadDocumentData are the bytes read (no copy), which the caller keeps
// as the file's contents before: every edit of the document (and of a
// second document of the same file read in the same process) leaves
// those bytes and the other document as they were read.
func TestReadDocumentDataEditsLeaveBytes(t *testing.T) {
	p := filepath.Join(t.TempDir(), "moat.conf")
	text := "default deny incoming\nallow 22/tcp\ndeny from 192.0.2.1\ndeny from 2001:db8::/32\n"
	if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	d, data, err := ReadDocumentData(p)
	if err != nil {
		t.Fatal(err)
	}
	other, odata, err := ReadDocumentData(p)
	if err != nil {
		t.Fatal(err)
	}
	before := slices.Clone(d.Lines)
	d.AppendLine("allow 80/tcp")
	if err := d.InsertRule(1, "allow 443/tcp"); err != nil {
		t.Fatal(err)
	}
	if _, err := d.DeleteRule(3); err != nil {
		t.Fatal(err)
	}
	d.SetDefault(Out, Deny)
	d.Lines[0] = "default allow incoming"
	for range 20 { // past the lines' spare room
		d.AppendLine("deny from 198.51.100.1")
	}
	if string(data) != text || string(odata) != text {
		t.Fatalf("an edit changed the bytes read: %q, %q", data, odata)
	}
	if !slices.Equal(other.Lines, before) || other.Text() != text {
		t.Fatalf("an edit of one document changed another's lines: %q", other.Lines)
	}
	other.AppendLine("deny from 203.0.113.1")
	if d.Lines[len(d.Lines)-1] != "deny from 198.51.100.1" {
		t.Fatalf("an append to one document changed the other's: %q", d.Lines[len(d.Lines)-1])
	}
}
