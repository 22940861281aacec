package cli

import (
	"fmt"

	"github.com/moat-fw/moat/internal/policy"
)

// normalizeNetmasks writes addresses with a dotted netmask as the CIDR
// they mean ('from 10.0.0.1/255.255.255.0' → 'from 10.0.0.0/24'), with a
// note, so the policy file holds one spelling.
func (a *app) normalizeNetmasks(args []string) []string {
	out := make([]string, len(args))
	for i, w := range args {
		out[i] = w
		if c, ok := policy.NormalizeNetmask(w); ok {
			fmt.Fprintf(a.errOut, "moat: note: %s is written as the CIDR %s\n", w, c)
			out[i] = c
		}
	}
	return out
}
