package execrun

import (
	"os"
	"os/exec"
	"sync"
)

// found maps a program name and the PATH it was looked up in to the path
// exec.LookPath found for it.
var found sync.Map // [2]string{name, PATH} -> string

// LookPath is exec.LookPath remembering what it found for the rest of the
// process, per program name and PATH. A command asked the PATH for the
// same programs up to three times (the backends' Available, the check for
// other filtering): a stat of each PATH directory each time, about 0.3 ms
// of CPU per command. A program not found is looked up again every time
// (it may have been installed since, in a long-running guard), and the
// path remembered is checked again (one stat): a program removed since,
// or no longer executable, is looked up on the PATH anew, so a guard
// running for weeks answers as a fresh command would.
func LookPath(name string) (string, error) {
	key := [2]string{name, os.Getenv("PATH")}
	if p, ok := found.Load(key); ok {
		// A path with a slash: exec.LookPath only checks that it is an
		// executable file, without searching the PATH.
		if _, err := exec.LookPath(p.(string)); err == nil {
			return p.(string), nil
		}
		found.Delete(key)
	}
	p, err := exec.LookPath(name)
	if err != nil {
		return p, err
	}
	found.Store(key, p)
	return p, nil
}
