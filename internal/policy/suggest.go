package policy

import "strings"

// optionWords may follow a rule's short form ('allow 22/tcp comment x').
var optionWords = []string{"comment", "rate"}

// keywordWords are the words of a rule's full form and options.
var keywordWords = []string{"proto", "from", "to", "port", "comment", "rate", "in", "out", "on", "log", "log-all"}

// didYouMean names the word of words closest to w (at most two edits
// away), as " (did you mean 'comment'?)", or "".
func didYouMean(w string, words []string) string {
	w = strings.ToLower(w)
	best, bestD := "", 3
	for _, c := range words {
		if d := editDistance(w, c); d < bestD && d > 0 {
			best, bestD = c, d
		}
	}
	if best == "" {
		return ""
	}
	return " (did you mean '" + best + "'?)"
}

// editDistance is the Levenshtein distance of two short words.
func editDistance(a, b string) int {
	if len(a) > 64 || len(b) > 64 {
		return 64
	}
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// shortFormTail is the error for words after a rule's short form: the
// first of them is the culprit, not the port before it.
func (p *parser) shortFormTail(port, extra Token) *Error {
	word := strings.ToLower(extra.Text)
	switch {
	case word == "log" || word == "log-all":
		return p.errAt(extra, "'%s' must come right after the action: expected e.g. 'allow %s %s'", extra.Text, word, port.Text)
	case (word == "tcp" || word == "udp") && !strings.Contains(port.Text, "/"):
		return p.errAt(extra, "unexpected '%s' after '%s': expected '%s/%s'", extra.Text, port.Text, port.Text, word)
	}
	return p.errAt(extra, "unexpected '%s' after '%s': after a port only 'comment TEXT' or 'rate N/Ts' may follow%s",
		extra.Text, port.Text, didYouMean(extra.Text, optionWords))
}

// isShortForm says whether t reads as the port of a rule's short form
// ('22/tcp', 'ssh'), without changing r.
func (p *parser) isShortForm(r Rule, t Token) bool {
	if _, ok := p.apps.Lookup(t.Text); ok {
		return true
	}
	return p.parseSimple(&r, t) == nil
}
