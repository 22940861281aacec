package engine

import (
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"time"
)

// decodeFresh reads the applied record without the memo.
func decodeFresh(t *testing.T, dir string) (*Applied, error) {
	t.Helper()
	appliedMemo.put(nil, Applied{})
	return LoadApplied(dir)
}

// The record a read reuses (after a write, after a read) is the one
// decoding the file gives, and a file changed since is decoded anew.
func TestAppliedMemo(t *testing.T) {
	for _, tc := range []struct {
		name string
		a    Applied
	}{
		{"plain", Applied{Backend: "nftables", Setting: "auto", Policy: "default deny incoming\nallow 22/tcp\n", Source: "/etc/moat/moat.conf",
			Time: time.Now().UTC(), Pending: "abc"}},
		{"invalid utf-8", Applied{Backend: "iptables", Policy: "allow 22/tcp # \xff\xfe <&>\n", Source: "/etc/moat/\xc3(",
			Time: time.Now().UTC(), FailClosed: true, FailReason: "bad \xff"}},
		{"local time", Applied{Backend: "nftables", Policy: "allow 80/tcp\n", Time: time.Now().In(time.FixedZone("X", 3600))}},
		{"zero time", Applied{Backend: "nftables", Policy: "x"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			a := tc.a
			if err := writeApplied(dir, &a); err != nil {
				t.Fatal(err)
			}
			memo, merr := LoadApplied(dir)
			fresh, ferr := decodeFresh(t, dir)
			if !reflect.DeepEqual(memo, fresh) || errText(merr) != errText(ferr) {
				t.Fatalf("read after write: %v\n%#v\ndecoded: %v\n%#v", merr, memo, ferr, fresh)
			}
			if ferr != nil {
				return // JSON changed the text (invalid UTF-8): unreadable, memo or not
			}
			again, err := LoadApplied(dir)
			if err != nil || !reflect.DeepEqual(again, fresh) {
				t.Fatalf("read after read: %v\n%#v\ndecoded:\n%#v", err, again, fresh)
			}
			// The copy handed out is the caller's own.
			again.Policy = "changed"
			if b, _ := LoadApplied(dir); b.Policy == "changed" {
				t.Fatal("a caller's change reached the memo")
			}
		})
	}
}

func errText(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

func TestAppliedMemoSeesChangedFile(t *testing.T) {
	dir := t.TempDir()
	a := Applied{Backend: "nftables", Policy: "allow 22/tcp\n", Time: time.Now().UTC()}
	if err := writeApplied(dir, &a); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadApplied(dir); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, AppliedFile)
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	// Same length, another policy: the checksum no longer matches.
	tampered := []byte(string(data))
	for i := range len(tampered) - 8 {
		if string(tampered[i:i+3]) == "22/" {
			tampered[i] = '2'
			tampered[i+1] = '3'
			break
		}
	}
	if err := os.WriteFile(path, tampered, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadApplied(dir); err == nil {
		t.Fatal("a tampered record was read without error (served from the memo)")
	}
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if got, err := LoadApplied(dir); err != nil || got != nil {
		t.Fatalf("removed record: %v, %v", got, err)
	}
}
