package engine

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"
	"unicode/utf8"
	"unsafe"

	"github.com/moat-fw/moat/internal/atomicfile"
	"github.com/moat-fw/moat/internal/statedir"
	"github.com/moat-fw/moat/internal/statetext"
)

// The files of the state directory that the engine owns.
const (
	// AppliedFile records what moat last put in the kernel (Applied).
	AppliedFile = "applied.json"
	// IntentFile is the journal of a change in progress (Intent).
	IntentFile   = "intent.json"
	pendingFile  = "pending.json"
	snapshotFile = "pending.snapshot"
	policyFile   = "pending.policy"
	// rollbackBansFile keeps the bans in force when a rollback began,
	// for a rollback cut short between the restore and putting them back.
	rollbackBansFile = "pending.bans"
	// listCopiesFile keeps the saved copies of the file blocklists from
	// before the unconfirmed change, for its rollback.
	listCopiesFile = "pending.blocklists"
	outcomeFile    = "last-outcome.json"
	lockFile       = "lock"
	// LogFile is where the watchdog writes what it did.
	LogFile = "moat.log"
)

// Applied is the record of what moat last put in the kernel: the one
// source of truth for "what is applied" that status, explain and drift
// reporting read (the policy file may have changed since; the kernel may
// have been changed by hand). It is written after the kernel took the
// ruleset and before the command reports success, and removed when moat's
// rules are removed.
type Applied struct {
	// Backend is the backend that holds moat's rules: nftables or iptables.
	Backend string `json:"backend"`
	// Setting is what the policy's 'backend' line said when it was applied
	// ("auto", "nftables", "iptables", or "" for no line): a plain command
	// keeps Backend unless this line changes or --backend is given.
	Setting string `json:"backend_setting"`
	// Policy is the policy text that was compiled and applied. On disk,
	// a large one is in a file of its own (PolicyFile) and this is empty.
	Policy string `json:"policy"`
	// PolicyFile names the file of the state directory that holds Policy
	// (statetext: policy.<sha256>); empty in memory, and for a small
	// policy, which the record holds itself.
	PolicyFile string `json:"policy_file,omitempty"`
	// PolicySHA256 is the hex SHA-256 of Policy: compare it with the
	// policy file's to see whether the file has unapplied changes.
	PolicySHA256 string `json:"policy_sha256"`
	// Source is the policy file (for the fail-closed ruleset too).
	Source string `json:"source"`
	// Time is when it was applied.
	Time time.Time `json:"time"`
	// FailClosed: 'moat restore' could not load the saved ruleset and put
	// in the fail-closed ruleset (only SSH in); FailReason says why.
	FailClosed bool   `json:"fail_closed"`
	FailReason string `json:"fail_reason,omitempty"`
	// Pending is the ID of the --confirm change this record belongs to
	// while it waits for 'moat confirm' (empty once confirmed).
	Pending string `json:"pending,omitempty"`
}

// Hash is the hex SHA-256 of a policy text, as Applied.PolicySHA256.
func Hash(data []byte) string {
	return statetext.Hash(string(data))
}

// LoadApplied reads the applied record; nil, nil when there is none
// (moat is not active, or it was applied by a moat without the record).
//
// One command reads the record several times (the drift check, the
// engine, the fingerprint after the change), and at 100,000 policy lines
// decoding it costs about 0.1 s: a read whose bytes are exactly those last
// decoded or written by this process reuses that record (a copy).
//
// A reader without moat's lock (status, explain) may read the record just
// before a change replaces it and removes the text it names: then it
// reads the new record (statetext.Reread).
func LoadApplied(dir string) (*Applied, error) {
	read := func() ([]byte, error) {
		data, err := readState(dir, AppliedFile)
		if errors.Is(err, os.ErrNotExist) {
			return nil, nil
		}
		return data, err
	}
	return statetext.Reread(read, func(data []byte) (*Applied, error) { return decodeApplied(dir, data) })
}

// appliedRead, when set (by tests), runs between reading the record and
// reading the text it names.
var appliedRead func()

// decodeApplied reads the applied record's bytes (nil: there is none).
func decodeApplied(dir string, data []byte) (*Applied, error) {
	if data == nil {
		return nil, nil
	}
	if a, ok := appliedMemo.get(data); ok {
		return a, nil
	}
	var a Applied
	if err := json.Unmarshal(data, &a); err != nil {
		return nil, fmt.Errorf("read %s: %w", filepath.Join(dir, AppliedFile), err)
	}
	if appliedRead != nil {
		appliedRead()
	}
	if err := loadText(dir, &a); err != nil {
		return nil, fmt.Errorf("read %s: %w", filepath.Join(dir, AppliedFile), err)
	}
	if a.PolicySHA256 != statetext.Hash(a.Policy) {
		return nil, fmt.Errorf("read %s: the policy does not match its checksum", filepath.Join(dir, AppliedFile))
	}
	appliedMemo.put(data, a)
	return &a, nil
}

// loadText reads the policy of a record from its file, if it has one.
func loadText(dir string, a *Applied) error {
	if a == nil || a.PolicyFile == "" {
		return nil
	}
	if a.Policy != "" {
		return fmt.Errorf("the record has a policy and names the file %q too", a.PolicyFile)
	}
	text, err := statetext.Get(dir, a.PolicyFile)
	if err != nil {
		return err
	}
	a.Policy, a.PolicyFile = text, ""
	return nil
}

// storeText is a as written to disk: a large policy is stored in a file of
// its own, which the copy names.
func storeText(dir string, a *Applied) (*Applied, error) {
	if a == nil {
		return nil, nil
	}
	rec := *a
	rec.PolicyFile = ""
	if len(rec.Policy) < statetext.InlineMax {
		return &rec, nil
	}
	name, err := statetext.Put(dir, rec.Policy)
	if err != nil {
		return nil, err
	}
	rec.PolicySHA256 = statetext.Hash(rec.Policy)
	rec.Policy, rec.PolicyFile = "", name
	return &rec, nil
}

func writeApplied(dir string, a *Applied) error {
	return writeAppliedSync(dir, a, true)
}

// writeAppliedSync is writeApplied; without dirSync the directory is not
// synced (the caller writes another state file right after, whose sync
// makes both renames durable).
func writeAppliedSync(dir string, a *Applied, dirSync bool) error {
	if a == nil {
		return removeState(dir, AppliedFile)
	}
	data, err := appliedData(dir, a)
	if err != nil {
		return err
	}
	write := writeState
	if !dirSync {
		write = statedir.WriteFileSyncDirLater
	}
	return write(dir, AppliedFile, data)
}

// prepareApplied is writeAppliedSync up to the rename (statedir.Prepare):
// the record takes effect when the caller commits it and syncs dir.
func prepareApplied(dir string, a *Applied) (*atomicfile.Prepared, error) {
	data, err := appliedData(dir, a)
	if err != nil {
		return nil, err
	}
	return statedir.Prepare(dir, AppliedFile, data)
}

// appliedData is the text of the applied record a (a long policy goes to
// a text file of its own, written first); it sets a.PolicySHA256.
func appliedData(dir string, a *Applied) ([]byte, error) {
	a.PolicySHA256 = statetext.Hash(a.Policy)
	rec, err := storeText(dir, a)
	if err != nil {
		return nil, fmt.Errorf("write %s: %w", AppliedFile, err)
	}
	data, err := marshalState(AppliedFile, rec)
	if err != nil {
		return nil, err
	}
	// What reading these bytes back gives, when JSON keeps every field
	// as it is (it replaces invalid UTF-8): then the read after this
	// write need not decode them (a memo of exact bytes: it serves no
	// other file).
	if roundTrips(a) {
		rec := *a
		rec.Time = rec.Time.Round(0) // no monotonic reading, as decoded
		appliedMemo.put(data, rec)
	}
	return data, nil
}

func roundTrips(a *Applied) bool {
	for _, s := range []string{a.Backend, a.Setting, a.Policy, a.PolicySHA256, a.Source, a.FailReason, a.Pending} {
		if !utf8.ValidString(s) {
			return false
		}
	}
	return a.Time.Location() == time.UTC
}

// appliedMemo is the applied record last decoded or written, with its
// exact bytes.
var appliedMemo memo

type memo struct {
	mu   sync.Mutex
	data []byte
	rec  Applied
}

func (m *memo) get(data []byte) (*Applied, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.data == nil || !bytes.Equal(m.data, data) {
		return nil, false
	}
	a := m.rec
	return &a, true
}

func (m *memo) put(data []byte, a Applied) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.data = bytes.Clone(data)
	m.rec = a
}

// Intent is the journal of a change in progress: written (fsynced) before
// the kernel is touched and removed once the kernel, the policy file and
// the records all hold the change. If moat dies in between, the next
// state-changing command finds it and undoes the change (Repair).
type Intent struct {
	PID     int       `json:"pid"`
	Command string    `json:"command"`
	Time    time.Time `json:"time"`
	// Prev is what was applied before (nil: nothing); Next the change.
	Prev *Applied `json:"prev"`
	Next *Applied `json:"next"`
	// Path is the policy file; PrevFile its contents before (HadFile false
	// when there was no file). FileChanged: the command writes the file.
	Path     string `json:"path"`
	PrevFile []byte `json:"prev_file"`
	// PrevFileStored names the file of the state directory that holds
	// PrevFile when it is large (statetext); empty in memory.
	PrevFileStored string `json:"prev_file_stored,omitempty"`
	HadFile        bool   `json:"had_file"`
	FileChanged    bool   `json:"file_changed"`
	// PrevSaved is saved.json before (nil: none).
	PrevSaved []byte `json:"prev_saved"`
	// Pending is the ID of the confirmation this change armed, if any.
	Pending string `json:"pending,omitempty"`
}

// LoadIntent reads the journal of an interrupted change; nil, nil if none.
func LoadIntent(dir string) (*Intent, error) {
	data, err := readState(dir, IntentFile)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var in Intent
	if err := json.Unmarshal(data, &in); err != nil {
		return nil, fmt.Errorf("read %s: %w", filepath.Join(dir, IntentFile), err)
	}
	err = errors.Join(loadText(dir, in.Prev), loadText(dir, in.Next))
	if err == nil && in.PrevFileStored != "" {
		var text string
		if len(in.PrevFile) > 0 {
			err = fmt.Errorf("the journal has the policy file and names the file %q too", in.PrevFileStored)
		} else if text, err = statetext.Get(dir, in.PrevFileStored); err == nil {
			in.PrevFile, in.PrevFileStored = []byte(text), ""
		}
	}
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", filepath.Join(dir, IntentFile), err)
	}
	return &in, nil
}

// writeIntent writes the journal, its large texts in files of their own.
func writeIntent(dir string, in *Intent) error {
	rec := *in
	var err error
	if rec.Prev, err = storeText(dir, in.Prev); err != nil {
		return err
	}
	if rec.Next, err = storeText(dir, in.Next); err != nil {
		return err
	}
	rec.PrevFileStored = ""
	if len(rec.PrevFile) >= statetext.InlineMax {
		// Without a copy of the file (2.6 MB at 100,000 lines): no one
		// changes the bytes of a journal's PrevFile once it is made (the
		// file read, or the text read back), and Put and Hash only read
		// them (Hash keeps the string to compare with the next text).
		prevText := unsafe.String(unsafe.SliceData(rec.PrevFile), len(rec.PrevFile))
		if rec.PrevFileStored, err = statetext.Put(dir, prevText); err != nil {
			return err
		}
		rec.PrevFile = nil
	}
	return writeJSON(dir, IntentFile, &rec)
}

// Outcome is how the last pending change ended.
type Outcome struct {
	ID      string    `json:"id"`
	Outcome string    `json:"outcome"` // "confirmed", "rolled back" or "disabled"
	Time    time.Time `json:"time"`
	// Applied is when the change was applied; Reason why it was rolled
	// back ("deadline", "moat rollback", ...).
	Applied time.Time `json:"applied"`
	Reason  string    `json:"reason,omitempty"`
}

// LastOutcome reads how the last pending change ended.
func LastOutcome(dir string) (*Outcome, error) {
	data, err := readState(dir, outcomeFile)
	if err != nil {
		return nil, err
	}
	var o Outcome
	if err := json.Unmarshal(data, &o); err != nil {
		return nil, fmt.Errorf("read %s: %w", filepath.Join(dir, outcomeFile), err)
	}
	return &o, nil
}

func writeOutcome(dir string, o Outcome) error {
	if err := writeJSON(dir, outcomeFile, o); err != nil {
		return fmt.Errorf("record the outcome of change %s: %w", o.ID, err)
	}
	return nil
}

// readState reads a file of the state directory (statedir: no symbolic
// links, only regular files, a directory only root can change).
func readState(dir, name string) ([]byte, error) {
	return statedir.ReadFile(dir, name)
}

func writeState(dir, name string, data []byte) error {
	return statedir.WriteFile(dir, name, data)
}

func writeJSON(dir, name string, v any) error {
	data, err := marshalState(name, v)
	if err != nil {
		return err
	}
	return writeState(dir, name, data)
}

// marshalState is the text writeJSON writes for v.
func marshalState(name string, v any) ([]byte, error) {
	data, err := statedir.MarshalJSON(v)
	if err != nil {
		return nil, fmt.Errorf("write %s: %w", name, err)
	}
	return data, nil
}

func removeState(dir, name string) error {
	if err := statedir.Remove(dir, name); err != nil {
		return fmt.Errorf("remove %s: %w", filepath.Join(dir, name), err)
	}
	return nil
}
