// Package procstat reads a process's state and start time from the text
// of its /proc/PID/stat.
package procstat

import (
	"bytes"
	"strconv"
	"strings"
)

// Start gives the state (field 3) and the start time in clock ticks
// since boot (field 22) of a /proc/PID/stat text. The command name
// (field 2) is in parentheses and may hold any byte, ')' and spaces
// among them (a program's file name is any user's to choose): the fields
// after it follow the last ')'. ok is false for a text that is not one.
func Start(data []byte) (state string, ticks uint64, ok bool) {
	i := bytes.LastIndexByte(data, ')')
	if i < 0 {
		return "", 0, false
	}
	f := strings.Fields(string(data[i+1:]))
	if len(f) < 20 {
		return "", 0, false
	}
	ticks, err := strconv.ParseUint(f[19], 10, 64) // field 22: f[0] is field 3
	if err != nil {
		return "", 0, false
	}
	return f[0], ticks, true
}
