package guard

import (
	"regexp"
	"sync"
)

// lazyRegexp is a regular expression compiled on its first use: the
// package's patterns took about 2 ms to compile when the program started,
// a cost every moat command paid, though most never read a log line.
type lazyRegexp struct {
	expr string
	get  func() *regexp.Regexp
}

// lazyRE holds expr, which must compile (as regexp.MustCompile).
func lazyRE(expr string) *lazyRegexp {
	return &lazyRegexp{expr: expr, get: sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(expr) })}
}

func (l *lazyRegexp) MatchString(s string) bool            { return l.get().MatchString(s) }
func (l *lazyRegexp) FindString(s string) string           { return l.get().FindString(s) }
func (l *lazyRegexp) FindStringSubmatch(s string) []string { return l.get().FindStringSubmatch(s) }
func (l *lazyRegexp) FindAllStringIndex(s string, n int) [][]int {
	return l.get().FindAllStringIndex(s, n)
}
