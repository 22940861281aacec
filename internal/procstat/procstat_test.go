package procstat

import "testing"

// Start reads the fields after the last ')': a name that looks like the
// fields after it (spaces, parentheses, a newline) is no field.
func TestStart(t *testing.T) {
	const rest = " S 1 7 7 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 123456 2453504 200"
	for _, name := range []string{"sleep", ") Z 1 2 3 4 5", "a (b) X 7 7 7", ")) 9 9 9 9 9 9", "x\n) Z 0", ""} {
		state, ticks, ok := Start([]byte("4242 (" + name + ")" + rest + "\n"))
		if !ok || state != "S" || ticks != 123456 {
			t.Errorf("named %q: %q %d %v, want S 123456", name, state, ticks, ok)
		}
	}
	for _, bad := range []string{"", "4242 (x", "4242 (x) S 1 2", "4242 (x) S 1 7 7 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 -5 0"} {
		if _, _, ok := Start([]byte(bad)); ok {
			t.Errorf("%q read as a stat line", bad)
		}
	}
}

func FuzzStart(f *testing.F) {
	f.Add([]byte("1 (init) S 0 1 1 0 -1 4194560 1 0 0 0 1 2 0 0 20 0 1 0 5 2453504 200\n"))
	f.Add([]byte("9 () Z 1) S 0 1 1 0 -1 4194560 1 0 0 0 1 2 0 0 20 0 1 0 5 2453504 200\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		_, _, _ = Start(data) // no panic on any text
	})
}
