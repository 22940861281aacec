package blocklist

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/moat-fw/moat/internal/policy"
	"github.com/moat-fw/moat/internal/statedir"
)

// fileCopies is the saved copies of the file lists at one time: a --confirm
// change keeps them (its apply reads the list files again and saves what
// it loads) and its rollback puts them back with the kernel's sets.
type fileCopies struct {
	Lists []fileCopy `json:"lists"`
}

type fileCopy struct {
	Name string          `json:"name"`
	Meta json.RawMessage `json:"meta"`
	List []byte          `json:"list,omitempty"` // nil: none saved
}

// FileCopies gives the saved copies of the file lists (metadata and
// list), for RestoreFileCopies.
func FileCopies(stateDir string) ([]byte, error) {
	var out fileCopies
	entries, err := os.ReadDir(listDir(stateDir))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("blocklists: %w", err)
	}
	for _, e := range entries {
		name, ok := strings.CutSuffix(e.Name(), ".json")
		if !ok || !e.Type().IsRegular() {
			continue
		}
		m, err := ReadMeta(stateDir, name)
		if err != nil || m.Source != string(policy.BlocklistFile) {
			continue // a damaged one is rewritten by the next load anyway
		}
		meta, err := statedir.ReadFile(listDir(stateDir), name+".json")
		if err != nil {
			return nil, fmt.Errorf("blocklist %s: %w", name, err)
		}
		c := fileCopy{Name: name, Meta: meta}
		if c.List, err = statedir.ReadFile(listDir(stateDir), name+".list"); err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("blocklist %s: %w", name, err)
		}
		out.Lists = append(out.Lists, c)
	}
	return json.Marshal(&out)
}

// RestoreFileCopies writes back the saved copies FileCopies gave: each
// list before its metadata (whose checksum vouches for it).
func RestoreFileCopies(stateDir string, data []byte) error {
	var in fileCopies
	if err := json.Unmarshal(data, &in); err != nil {
		return fmt.Errorf("the saved copies of the file blocklists are damaged: %w", err)
	}
	var errs []error
	for _, c := range in.Lists {
		var m Meta
		if json.Unmarshal(c.Meta, &m) != nil || m.Name != c.Name || m.Source != string(policy.BlocklistFile) {
			errs = append(errs, fmt.Errorf("blocklist %q: a damaged saved copy, not restored", c.Name))
			continue
		}
		if c.List != nil {
			if err := statedir.WriteFile(listDir(stateDir), c.Name+".list", c.List); err != nil {
				errs = append(errs, fmt.Errorf("blocklist %s: %w", c.Name, err))
				continue
			}
		}
		if err := statedir.WriteFile(listDir(stateDir), c.Name+".json", c.Meta); err != nil {
			errs = append(errs, fmt.Errorf("blocklist %s: %w", c.Name, err))
		}
	}
	return errors.Join(errs...)
}
