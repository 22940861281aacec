package engine

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"runtime/debug"
	"strings"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/moat-fw/moat/internal/policy"
	"github.com/moat-fw/moat/internal/ruleset"
	"github.com/moat-fw/moat/internal/statedir"
)

// coveredMemoFile keeps the covered-rule search's result for the
// policy's rules up to its last rule with a network (ruleset.CoveredMemo),
// so that an edit of a port rule at the end of a policy of 100,000
// address rules does not search them again (about 12 ms of the edit's
// CPU). It is a cache: written without fsync (statedir.WriteCache), and
// its reader checks everything in it before using it, so a file old,
// torn, corrupted or written by hand is not used and is rewritten:
//
//   - its MAC (the first line: HMAC-SHA256 of the rest under the key in
//     coveredMemoKeyFile, 32 random bytes that only root can read): a
//     memo made by anyone without the key, or torn, is not used. A memo
//     that leaves out covered rules cannot be told from the rules without
//     searching them, so the MAC is what stands between a forged memo
//     and warnings hidden from the admin;
//   - the format's version and the moat build that wrote it (another
//     build may search differently);
//   - the sum of the rules it was computed from (policy.RulesSum), which
//     the policy's first N rules must have: a rule changed, moved,
//     added or deleted among them, or one line moved up or down, and the
//     search runs whole;
//   - each covered rule it names: in range, in order, and covered by the
//     earlier rule it names (ruleset.ShadowedMemo).
//
// A cache that cannot be written costs only the next search's time.
const coveredMemoFile = "covered-rules.cache"

// coveredMemoKeyFile holds the key of coveredMemoFile's MAC.
const coveredMemoKeyFile = "covered-rules.key"

// coveredMemoVersion is the memo's format and the search's version: a
// change to what ruleset.Shadowed finds must change it.
const coveredMemoVersion = 1

type coveredMemoRecord struct {
	Version int      `json:"version"`
	Build   string   `json:"build"`
	N       int      `json:"n"`
	Sum     string   `json:"sum"`
	Pairs   [][2]int `json:"pairs"`
}

// buildID names the running moat build: its module version and, when
// built from a repository, the commit and whether the tree had changes;
// and the executable file itself (device, inode, size, modification and
// change times of /proc/self/exe). The packages are built without the
// repository's data (-buildvcs=false: every release is "(devel)"), so
// the version alone would let a moat whose search finds more take the
// memo of the moat before it; an executable replaced or rewritten in
// place is another build. An executable that cannot be named makes an
// ID of this process alone (its memo is never used again).
var buildID = sync.OnceValue(func() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		bi = nil
	}
	var st unix.Stat_t
	if err := unix.Stat("/proc/self/exe", &st); err != nil {
		return buildIDOf(bi, nil)
	}
	return buildIDOf(bi, &st)
})

// buildIDOf is buildID of the build bi (nil: unknown) and the executable
// exe (nil: unknown).
func buildIDOf(bi *debug.BuildInfo, exe *unix.Stat_t) string {
	id := "unknown"
	if bi != nil {
		id = bi.Main.Version
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" || s.Key == "vcs.modified" {
				id += " " + s.Value
			}
		}
	}
	if exe == nil {
		nonce := make([]byte, 16)
		_, _ = rand.Read(nonce) // never fails (crypto/rand)
		return id + " process " + hex.EncodeToString(nonce)
	}
	return fmt.Sprintf("%s exe %d:%d %d %d.%09d %d.%09d", id, exe.Dev, exe.Ino, exe.Size,
		exe.Mtim.Sec, exe.Mtim.Nsec, exe.Ctim.Sec, exe.Ctim.Nsec)
}

// shadowedKept is ruleset.Shadowed(p), with the memo kept in dir ("":
// none) used where it holds. keep writes the memo again where it did not
// hold (nil: nothing to write): the caller runs it on the command's own
// path, holding moat's lock, once the change succeeded. The search runs
// beside an apply, which may fail and return (its process then exits)
// while the search goes on: the search only reads, so a command that
// failed writes nothing of it, not after it let go of the lock, nor half
// (a temporary file left by its exit).
func shadowedKept(dir string, p *policy.Policy) (covered []ruleset.Covered, keep func()) {
	if dir == "" {
		return ruleset.Shadowed(p), nil
	}
	var m *ruleset.CoveredMemo
	key, err := statedir.ReadKey(dir, coveredMemoKeyFile, 32)
	if err == nil {
		m = readCoveredMemo(dir, key)
	}
	covered, next := ruleset.ShadowedMemo(p, m)
	if next == nil {
		return covered, nil
	}
	return covered, func() {
		if key == nil {
			key = coveredMemoKey(dir)
		}
		writeCoveredMemo(dir, key, next)
	}
}

// readCoveredMemo reads the memo, nil if there is none or it fails its
// checks (ruleset.ShadowedMemo checks the rest against the policy).
func readCoveredMemo(dir string, key []byte) *ruleset.CoveredMemo {
	data, err := statedir.ReadFile(dir, coveredMemoFile)
	if err != nil {
		return nil
	}
	macHex, body, ok := strings.Cut(string(data), "\n")
	if !ok {
		return nil
	}
	if mac, err := hex.DecodeString(macHex); err != nil || !hmac.Equal(mac, memoMAC(key, body)) {
		return nil
	}
	var rec coveredMemoRecord
	if err := json.Unmarshal([]byte(body), &rec); err != nil || rec.Version != coveredMemoVersion || rec.Build != buildID() {
		return nil
	}
	m := &ruleset.CoveredMemo{N: rec.N, Pairs: rec.Pairs}
	sum, err := hex.DecodeString(rec.Sum)
	if err != nil || len(sum) != len(m.Sum) {
		return nil
	}
	copy(m.Sum[:], sum)
	return m
}

func memoMAC(key []byte, body string) []byte {
	h := hmac.New(sha256.New, key)
	_, _ = io.WriteString(h, body) // never fails (hash.Hash)
	return h.Sum(nil)
}

// coveredMemoKey is the memo's key, read from dir or made there. A key
// others can read, or not root's (the owner moat runs as), is replaced:
// memos made under it could be forged. A key that cannot be read or
// written is a random one for this process (its memo is then never used
// again: slower, never wrong).
func coveredMemoKey(dir string) []byte {
	return statedir.Key(dir, coveredMemoKeyFile, 32)
}

// writeCoveredMemo replaces the memo (a cache: a failure is ignored, and
// a kill during the write leaves a temporary file that the repair removes,
// removePrepared).
func writeCoveredMemo(dir string, key []byte, m *ruleset.CoveredMemo) {
	pairs := m.Pairs
	if pairs == nil {
		pairs = [][2]int{}
	}
	body, err := json.Marshal(coveredMemoRecord{Version: coveredMemoVersion, Build: buildID(), N: m.N, Sum: hex.EncodeToString(m.Sum[:]), Pairs: pairs})
	if err != nil {
		return
	}
	data := append([]byte(hex.EncodeToString(memoMAC(key, string(body)))+"\n"), body...)
	_ = statedir.WriteCache(dir, coveredMemoFile, data) // a cache: the next search runs whole
}
