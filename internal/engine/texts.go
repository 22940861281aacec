package engine

import (
	"encoding/json"
	"errors"
	"maps"
	"os"

	"github.com/moat-fw/moat/internal/safeapply"
	"github.com/moat-fw/moat/internal/statetext"
)

// savedHolds reports whether saved.json (its bytes data, nil: none) holds
// s already, but for the time it was saved: then it is not written again
// (a one-rule change with 100,000 lines rewrote it whole every time). A
// policy kept in a file of its own counts only if that file holds it.
func savedHolds(dir string, data []byte, s safeapply.Saved) bool {
	if data == nil {
		return false
	}
	var old safeapply.Saved
	if json.Unmarshal(data, &old) != nil || old.Backend != s.Backend || old.Source != s.Source ||
		!maps.Equal(old.Apps, s.Apps) || old.Saved.IsZero() {
		return false
	}
	if old.PolicyFile == "" {
		return old.Policy == s.Policy
	}
	if old.Policy != "" || len(s.Policy) < statetext.InlineMax || old.PolicyFile != statetext.Name(statetext.Hash(s.Policy)) {
		return false
	}
	// Put checks that the file holds the text (or writes it again).
	name, err := statetext.Put(dir, s.Policy)
	return err == nil && name == old.PolicyFile
}

// collectTexts removes the state texts no record names any more (under
// moat's lock). Every string of the records that is a text file's name
// counts, and saved.json as the journal keeps it; a record that cannot
// be read stops the collection (nothing is removed when in doubt).
func collectTexts(dir string) error {
	keep := map[string]bool{}
	for _, name := range []string{AppliedFile, savedFile, IntentFile, pendingFile} {
		data, err := readState(dir, name)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return err
		}
		if err := textNames(data, keep); err != nil {
			return err
		}
		if name == IntentFile {
			var in Intent
			if err := json.Unmarshal(data, &in); err != nil {
				return err
			}
			if in.PrevSaved != nil {
				if err := textNames(in.PrevSaved, keep); err != nil {
					return err
				}
			}
		}
	}
	return statetext.Collect(dir, keep)
}

// textNames adds the text files a JSON record names to keep.
func textNames(data []byte, keep map[string]bool) error {
	var v any
	if err := json.Unmarshal(data, &v); err != nil {
		return err
	}
	var walk func(v any)
	walk = func(v any) {
		switch v := v.(type) {
		case string:
			if statetext.IsName(v) {
				keep[v] = true
			}
		case []any:
			for _, x := range v {
				walk(x)
			}
		case map[string]any:
			for _, x := range v {
				walk(x)
			}
		}
	}
	walk(v)
	return nil
}
