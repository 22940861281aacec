package policy

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"
	"unsafe"

	"github.com/moat-fw/moat/internal/atomicfile"
	"github.com/moat-fw/moat/internal/boundedfile"
)

// DefaultPath is where moat keeps its policy.
const DefaultPath = "/etc/moat/moat.conf"

// maxErrors bounds how many problems one parse reports.
const maxErrors = 20

// maxFileSize bounds the policy file; a bigger one is refused unread.
const maxFileSize = 64 << 20

// Document is a policy file as lines of text, so that edits keep the
// admin's comments, blank lines and order.
type Document struct {
	Name  string
	Lines []string
	// Apps are the application profiles rules may name (nil: none).
	Apps Apps
	// cache is what the lines parsed to (cache.go).
	cache *parsed
}

// ReadDocument reads a policy file. A missing file is an empty document.
func ReadDocument(name string) (*Document, error) {
	d, _, err := ReadDocumentData(name)
	return d, err
}

// ReadDocumentData is ReadDocument, and the bytes read (nil for a file
// that does not exist). The document's lines are those bytes, not a copy
// of them (2.6 MB at 100,000 lines): the caller must never change them.
func ReadDocumentData(name string) (*Document, []byte, error) {
	data, err := ReadFile(name)
	if errors.Is(err, os.ErrNotExist) {
		return &Document{Name: name}, nil, nil
	}
	if err != nil {
		return nil, nil, err
	}
	return newDocumentText(name, unsafe.String(unsafe.SliceData(data), len(data))), data, nil
}

// SameAsBytes reports whether d.Bytes() would equal data, for the
// document NewDocument made of data: it does when the text has lines
// and ends with a newline (NewDocument splits the text without its last
// newline, and Bytes ends every line with one).
func SameAsBytes(d *Document, data []byte) bool {
	return len(d.Lines) > 0 && len(data) > 0 && data[len(data)-1] == '\n'
}

// ReadFile reads a policy file whole. Only a regular file of at most 64
// MiB is read: it is opened without blocking (a FIFO put in its place
// would otherwise hang moat, the lock it holds and a rollback that reads
// the file), and a device (/dev/zero) or directory is refused unread.
func ReadFile(name string) ([]byte, error) {
	f, st, err := boundedfile.Open(name)
	var notReg *boundedfile.NotRegularError
	switch {
	case errors.Is(err, os.ErrNotExist):
		return nil, err
	case errors.As(err, &notReg):
		return nil, fmt.Errorf("read policy %s: not a regular file", name)
	case err != nil:
		return nil, fmt.Errorf("read policy: %w", err)
	}
	defer func() { _ = f.Close() }() // read only
	// Bounded again while reading: the file may grow after Stat. The
	// buffer is sized once (io.ReadAll grew a 2.7 MB policy through
	// twice its size).
	data, err := boundedfile.ReadAll(f, st.Size(), maxFileSize)
	if err != nil {
		// "N bytes is more than the M allowed", "more than the M bytes allowed"
		return nil, fmt.Errorf("read policy %s: %w", name, err)
	}
	return data, nil
}

// NewDocument splits file contents into lines.
func NewDocument(name string, data []byte) *Document {
	return newDocumentText(name, string(data))
}

// newDocumentText is NewDocument of the text data.
func newDocumentText(name, data string) *Document {
	text := strings.TrimSuffix(data, "\n")
	d := &Document{Name: name}
	if text != "" || len(data) > 0 {
		d.Lines = splitLines(text)
	}
	if len(d.Lines) == 1 && d.Lines[0] == "" {
		d.Lines = nil
	}
	return d
}

// lineSlack is the room a document's lines (and its cache's) keep for
// lines an edit adds: a line added to a 100,000-line policy copied the
// 1.6 MB of line headers, twice, into slices twice that size.
const lineSlack = 8

// splitLines is strings.Split(text, "\n") with room for lineSlack lines
// more.
func splitLines(text string) []string {
	n := strings.Count(text, "\n") + 1
	lines := make([]string, 0, n+lineSlack)
	for {
		i := strings.IndexByte(text, '\n')
		if i < 0 {
			return append(lines, text)
		}
		lines = append(lines, text[:i])
		text = text[i+1:]
	}
}

// Bytes is the document as file contents.
func (d *Document) Bytes() []byte {
	if len(d.Lines) == 0 {
		return nil
	}
	n := len(d.Lines)
	for _, l := range d.Lines {
		n += len(l)
	}
	b := make([]byte, 0, n)
	for _, l := range d.Lines {
		b = append(b, l...)
		b = append(b, '\n')
	}
	return b
}

// Text is the document as file contents, as a string (Bytes, without a
// copy more).
func (d *Document) Text() string {
	if len(d.Lines) == 0 {
		return ""
	}
	n := len(d.Lines)
	for _, l := range d.Lines {
		n += len(l)
	}
	var b strings.Builder
	b.Grow(n)
	for _, l := range d.Lines {
		b.WriteString(l)
		b.WriteByte('\n')
	}
	return b.String()
}

// Write saves the document atomically (WriteFile).
func (d *Document) Write() error {
	if err := WriteFile(d.Name, d.Bytes()); err != nil {
		return fmt.Errorf("write policy: %w", err)
	}
	return nil
}

// Prepare is Write up to the rename (PrepareFile): the file takes effect
// when the caller commits it.
func (d *Document) Prepare() (*PreparedFile, error) {
	p, err := PrepareFile(d.Name, d.Bytes())
	if err != nil {
		return nil, fmt.Errorf("write policy: %w", err)
	}
	return p, nil
}

// PrepareText is Prepare with the document's contents given: text must
// be d.Text() (the caller made it already), written without a copy.
func (d *Document) PrepareText(text string) (*PreparedFile, error) {
	// WriteFile's data is only read (written to the file), never kept.
	p, err := PrepareFile(d.Name, unsafe.Slice(unsafe.StringData(text), len(text)))
	if err != nil {
		return nil, fmt.Errorf("write policy: %w", err)
	}
	return p, nil
}

// newFileMode is the mode of a policy file moat creates.
const newFileMode = 0o644

// maxSymlinks bounds a chain of symbolic links, as the kernel does.
const maxSymlinks = 40

// WriteFile replaces the contents of the policy file name atomically, as
// an admin's editor would keep it: through a symbolic link (the link stays,
// its target gets the new contents), with the file's mode and owner. The
// data goes to a temporary file in the target's directory, which is synced,
// given the old file's mode and owner, and renamed over the target; then
// the directory is synced. A new file gets mode 0644 (its directory is
// created 0755).
func WriteFile(name string, data []byte) error {
	p, err := PrepareFile(name, data)
	if err != nil {
		return err
	}
	return p.Commit()
}

// PreparedFile is a policy file written and synced beside its target, not
// yet in place (WriteFile up to the rename): Commit puts it in place and
// syncs the directory, Abort removes it.
type PreparedFile struct {
	target, tmp string
	done        bool
}

// PrepareFile is WriteFile up to the rename: a caller writes and syncs the
// file while it waits for something else (the kernel taking the change).
func PrepareFile(name string, data []byte) (*PreparedFile, error) {
	target, err := resolveLinks(name)
	if err != nil {
		return nil, err
	}
	mode, uid, gid := os.FileMode(newFileMode), -1, -1
	fi, err := os.Stat(target)
	switch {
	case err == nil:
		if !fi.Mode().IsRegular() {
			return nil, fmt.Errorf("%s: not a regular file", target)
		}
		mode = fi.Mode().Perm() | fi.Mode()&(os.ModeSetuid|os.ModeSetgid|os.ModeSticky)
		if st, ok := fi.Sys().(*syscall.Stat_t); ok {
			uid, gid = int(st.Uid), int(st.Gid)
		}
	case errors.Is(err, os.ErrNotExist):
		if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
			return nil, err
		}
	default:
		return nil, err
	}
	tmp, err := os.CreateTemp(filepath.Dir(target), "."+filepath.Base(target)+".*")
	if err != nil {
		return nil, err
	}
	_, err = tmp.Write(data)
	if err == nil && uid >= 0 {
		if tfi, serr := tmp.Stat(); serr != nil {
			err = serr
		} else if st, ok := tfi.Sys().(*syscall.Stat_t); ok && (int(st.Uid) != uid || int(st.Gid) != gid) {
			err = tmp.Chown(uid, gid)
		}
	}
	if err == nil {
		// After chown, which clears set-id bits.
		err = tmp.Chmod(mode)
	}
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		_ = os.Remove(tmp.Name()) // the error that stopped us is what counts
		return nil, fmt.Errorf("write %s: %w", target, err)
	}
	return &PreparedFile{target: target, tmp: tmp.Name()}, nil
}

// Commit renames the prepared file over its target and syncs the
// directory. A nil PreparedFile commits nothing.
func (p *PreparedFile) Commit() error {
	if p == nil {
		return nil
	}
	if p.done {
		return fmt.Errorf("write %s: committed or aborted already", p.target)
	}
	p.done = true
	if err := os.Rename(p.tmp, p.target); err != nil {
		_ = os.Remove(p.tmp) // the rename's error is what counts
		return fmt.Errorf("write %s: %w", p.target, err)
	}
	// Make the rename durable; the file is in place either way.
	d, err := os.Open(filepath.Dir(p.target))
	if err != nil {
		return nil
	}
	if err := errors.Join(d.Sync(), d.Close()); err != nil && !errors.Is(err, syscall.EINVAL) {
		return fmt.Errorf("write %s: sync directory: %w", p.target, err)
	}
	return nil
}

// Abort removes the prepared file, unless it was committed. A nil
// PreparedFile aborts nothing.
func (p *PreparedFile) Abort() {
	if p == nil || p.done {
		return
	}
	p.done = true
	_ = os.Remove(p.tmp) // hidden and unused: nothing reads it
}

// RemovePrepared removes the files a PrepareFile of name left beside the
// file it names (".NAME.<digits>", hidden): a command killed between
// PrepareFile and Commit leaves one, which nothing reads and nothing
// renames later. The caller holds moat's lock and knows such a command
// stopped (its journal was undone).
//
// So are those of its backups (NAME.<UTC time>.bak, which 'moat reset'
// and 'moat import --write' write beside name before they replace it):
// ".NAME.<time>.bak.<digits>".
func RemovePrepared(name string) error {
	target, err := resolveLinks(name)
	if err != nil {
		return err
	}
	base := "." + filepath.Base(name) + "."
	backups := atomicfile.RemoveHiddenFunc(filepath.Dir(name), func(file string) bool {
		rest, ok := strings.CutPrefix(file, base)
		if !ok {
			return false
		}
		stamp, digits, ok := strings.Cut(rest, ".bak.")
		_, terr := time.Parse(backupStamp, stamp)
		return ok && terr == nil && digits != "" && strings.Trim(digits, "0123456789") == ""
	})
	return errors.Join(atomicfile.RemoveHidden(filepath.Dir(target), "."+filepath.Base(target)+".", ""), backups)
}

// backupStamp is the form of the time in a backup's name.
const backupStamp = "20060102T150405Z"

// resolveLinks follows name through symbolic links to the file they name,
// which need not exist yet (a dangling link is written through too).
func resolveLinks(name string) (string, error) {
	cur := name
	for range maxSymlinks {
		// The link's directory may be a link itself: a relative target
		// is resolved from where the directory really is.
		if dir, err := filepath.EvalSymlinks(filepath.Dir(cur)); err == nil {
			cur = filepath.Join(dir, filepath.Base(cur))
		}
		fi, err := os.Lstat(cur)
		if errors.Is(err, os.ErrNotExist) {
			return cur, nil
		}
		if err != nil {
			return "", err
		}
		if fi.Mode()&os.ModeSymlink == 0 {
			return cur, nil
		}
		link, err := os.Readlink(cur)
		if err != nil {
			return "", err
		}
		if !filepath.IsAbs(link) {
			link = filepath.Join(filepath.Dir(cur), link)
		}
		cur = link
	}
	return "", fmt.Errorf("%s: too many levels of symbolic links", name)
}

// lineStatement parses one line; ok is false for blank and comment lines.
func lineStatement(d *Document, i int, svc Services) (st Statement, ok bool, err error) {
	if r, ok := fastRule(d.Lines[i], Pos{File: d.Name, Line: i + 1}); ok {
		return Statement{Kind: StmtRule, Rule: r}, true, nil
	}
	st, ok, err = ParseLineApps(d.Lines[i], Pos{File: d.Name, Line: i + 1}, svc, d.Apps)
	if err != nil || !ok {
		return Statement{}, false, err
	}
	if st.Kind == StmtRule {
		st.Rule.Text = ruleText(d.Lines[i])
		for j := range st.More {
			st.More[j].Text = st.Rule.Text
		}
	}
	return st, true, nil
}

// ruleText is the rule as written: the line without its '#' comment.
func ruleText(line string) string {
	if !strings.Contains(line, "#") {
		// No comment: the tokens run from the first character that is
		// not a blank to the last (anything else is a lexing error, which
		// gives the same), so the line need not be lexed a second time.
		return strings.TrimSpace(line)
	}
	return ruleTextLexed(line)
}

// ruleTextLexed is ruleText by the tokens.
func ruleTextLexed(line string) string {
	toks, err := Lex(line)
	if err != nil || len(toks) == 0 {
		return strings.TrimSpace(line)
	}
	runes := []rune(line)
	last := toks[len(toks)-1]
	end := last.Col - 1 + len([]rune(last.Text))
	if last.Quoted {
		end += 2
	}
	if end > len(runes) {
		end = len(runes)
	}
	return strings.TrimSpace(string(runes[:end]))
}

// Policy parses the whole document. All problems are reported (up to a
// limit), each as FILE:LINE:COL: message.
//
// Each line is parsed once per document: the rules come from what an
// earlier FindRule or FindMatch parsed (index), and the policy takes them
// over (the document parses again if asked again).
func (d *Document) Policy(svc Services) (*Policy, error) {
	c := d.index(svc)
	d.cache = nil // the policy owns c.rules now
	p := New()
	p.Source = d.Name
	p.store = &c.rules
	return d.statements(p, svc, func(i int) bool { return c.kinds[i] == lineBlank || c.kinds[i] == lineRule })
}

// statements parses the lines into p but those done (nil: none; their
// rules are in p already), collecting the errors.
func (d *Document) statements(p *Policy, svc Services, done func(i int) bool) (*Policy, error) {
	var errs []error
	for i := range d.Lines {
		if done != nil && done(i) {
			continue
		}
		st, ok, err := lineStatement(d, i, svc)
		if err != nil {
			errs = append(errs, err)
			if len(errs) == maxErrors {
				errs = append(errs, fmt.Errorf("%s: too many errors, stopping", d.Name))
				break
			}
			continue
		}
		if !ok {
			continue
		}
		if st.Kind == StmtRule && done != nil {
			// Not cached as a rule: cannot happen (index parsed the same
			// text), but a rule is never lost.
			return d.policySlow(svc)
		}
		if err := p.add(st, Pos{File: d.Name, Line: i + 1, Col: 1}); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return p, nil
}

// add puts what statement st (of the line at pos) says into p.
func (p *Policy) add(st Statement, pos Pos) error {
	switch st.Kind {
	case StmtRule:
		if p.store != nil {
			p.store.add(st.Rule, false)
			for _, r := range st.More {
				p.store.add(r, false)
			}
			break
		}
		p.rules = append(p.rules, st.Rule)
		p.rules = append(p.rules, st.More...)
	case StmtDefault:
		p.Defaults[st.DefaultDir] = st.DefaultAction
		p.DefaultPos[st.DefaultDir] = pos
	case StmtBackend:
		p.Backend = st.Backend
	case StmtGuard:
		for _, g := range st.GuardSettings {
			p.Guard.set(g)
		}
	case StmtAllowlist:
		p.Guard.Allowlist = append(p.Guard.Allowlist, st.Allowlist...)
	case StmtBlocklist:
		return addBlocklist(p, st.Blocklist)
	case StmtLogging:
		p.Logging = st.Logging
	case StmtPortscan:
		p.Portscan = st.Portscan
	}
	return nil
}

// policySlow is Policy parsing every line, without the cache.
func (d *Document) policySlow(svc Services) (*Policy, error) {
	d.cache = nil
	p := New()
	p.Source = d.Name
	p.rules = make([]Rule, 0, len(d.Lines))
	return d.statements(p, svc, nil)
}

// ruleLines lists the indexes of the lines that hold rules, in order.
func (d *Document) ruleLines() []int {
	if idx, ok := d.cachedRuleLines(); ok {
		return idx
	}
	var idx []int
	for i, line := range d.Lines {
		toks, err := Lex(line)
		if err != nil || len(toks) == 0 {
			continue
		}
		switch strings.ToLower(toks[0].Text) {
		case "allow", "deny", "reject", "limit", "route":
			idx = append(idx, i)
		}
	}
	return idx
}

// RuleCount is how many rules the document holds.
func (d *Document) RuleCount() int { return len(d.ruleLines()) }

// AppendLine adds a line at the end.
func (d *Document) AppendLine(line string) {
	d.insertLine(len(d.Lines), line)
	d.Lines = append(d.Lines, line)
}

// InsertRule puts line before rule number n (1-based).
func (d *Document) InsertRule(n int, line string) error {
	idx := d.ruleLines()
	if len(idx) == 0 && n == 1 {
		d.AppendLine(line)
		return nil
	}
	if n < 1 || n > len(idx) {
		return fmt.Errorf("invalid position %d: expected 1 to %d", n, len(idx))
	}
	at := idx[n-1]
	d.insertLine(at, line)
	d.Lines = slices.Insert(d.Lines, at, line)
	return nil
}

// DeleteRule removes rule number n (1-based) and returns its line.
func (d *Document) DeleteRule(n int) (string, error) {
	idx := d.ruleLines()
	if n < 1 || n > len(idx) {
		if len(idx) == 0 {
			return "", fmt.Errorf("invalid rule number %d: there are no rules", n)
		}
		return "", fmt.Errorf("invalid rule number %d: expected 1 to %d", n, len(idx))
	}
	at := idx[n-1]
	line := d.Lines[at]
	d.deleteLine(at)
	d.Lines = append(d.Lines[:at], d.Lines[at+1:]...)
	return line, nil
}

// FindRule returns the number (1-based) of the first rule equal to r, or 0.
// As ufw's 'delete', a rule that r leaves without a comment is found
// whatever comment it has, when no rule is equal to r: 'delete allow
// 2222/tcp' deletes 'allow 2222/tcp comment admin'.
func (d *Document) FindRule(r Rule, svc Services) int {
	loose := 0
	exact := d.eachMayEqual(&r, svc, func(n int, got Rule) bool {
		if got.Equal(r) {
			return true
		}
		if loose == 0 && r.Comment == "" && got.Comment != "" {
			got.Comment = ""
			if got.Equal(r) {
				loose = n
			}
		}
		return false
	})
	if exact != 0 {
		return exact
	}
	return loose
}

// eachMayEqual calls found with the number (1-based) and the rule of
// each rule that mayEqual r, in order, until found says it is the one;
// it returns that number, or 0.
func (d *Document) eachMayEqual(r *Rule, svc Services, found func(n int, got Rule) bool) int {
	c := d.index(svc)
	n, k := 0, 0
	for i, kind := range c.kinds {
		switch kind {
		case lineRule:
			n++
			if c.rules.mayEqual(k, r) && found(n, c.rules.rule(k)) {
				return n
			}
		case lineBadRule:
			n++
		}
		k += int(c.nrules[i])
	}
	return 0
}

// mayEqual is false when a and b cannot have the same Key or MatchKey:
// what tells most rules apart, compared without building the keys.
func mayEqual(a, b *Rule) bool {
	return a.From == b.From && a.To == b.To && a.Direction == b.Direction && a.Proto == b.Proto &&
		len(a.ToPort) == len(b.ToPort) && len(a.FromPort) == len(b.FromPort)
}

// SetDefault writes 'default ACTION DIRECTION', replacing the line that set
// it before, or else putting it before the first rule.
func (d *Document) SetDefault(dir Direction, act Action) {
	line := fmt.Sprintf("default %s %s", act, DirectionWord(dir))
	last, firstRule := -1, -1
	for i := range d.Lines {
		st, ok, err := lineStatement(d, i, nil)
		if err != nil || !ok {
			// Rules with service names fail without services; they are
			// still rules for placement.
			if firstRule < 0 && err != nil {
				if toks, lerr := Lex(d.Lines[i]); lerr == nil && len(toks) > 0 && !strings.EqualFold(toks[0].Text, "default") {
					firstRule = i
				}
			}
			continue
		}
		if st.Kind == StmtDefault && st.DefaultDir == dir {
			last = i
		}
		if st.Kind == StmtRule && firstRule < 0 {
			firstRule = i
		}
	}
	switch {
	case last >= 0:
		d.Lines[last] = line
	case firstRule >= 0:
		d.Lines = append(d.Lines[:firstRule], append([]string{line}, d.Lines[firstRule:]...)...)
	default:
		d.AppendLine(line)
	}
}

// RuleTexts lists the rules as written (without comments), in order: rule
// N is RuleTexts()[N-1].
func (d *Document) RuleTexts() []string {
	var out []string
	for _, i := range d.ruleLines() {
		out = append(out, ruleText(d.Lines[i]))
	}
	return out
}
