package cli

import "fmt"

// count writes "1 rule", "2 rules", "0 rules".
func count(n int, noun string) string {
	if n == 1 {
		return fmt.Sprintf("1 %s", noun)
	}
	return fmt.Sprintf("%d %ss", n, noun)
}
