package guard

import (
	"regexp"
	"testing"
)

// Every pattern compiles (they are compiled on first use, no longer when
// the program starts, so a bad one would panic only on the line that
// needs it).
func TestPatternsCompile(t *testing.T) {
	all := []*lazyRegexp{priRe, bsdTimeRe, isoTimeRe, fullTimeRe, unixTimeRe, monoTimeRe, rfc5424Re,
		sourceRe, facilityRe, progRe, tooManyRe, authFail, vendorRe}
	for _, table := range []map[string][]pattern{sshdPatterns, dropbearPatterns} {
		for _, pts := range table {
			for _, pt := range pts {
				all = append(all, pt.re)
				if pt.unique != nil {
					all = append(all, pt.unique)
				}
			}
		}
	}
	for _, l := range all {
		if _, err := regexp.Compile(l.expr); err != nil {
			t.Errorf("%q: %v", l.expr, err)
		}
		if l.get() == nil {
			t.Errorf("%q: not compiled", l.expr)
		}
	}
}
