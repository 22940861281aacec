package policy

import "strings"

// LogLevel is ufw's logging level.
type LogLevel string

// The levels, as ufw defines them:
//
//	off     no logging
//	low     blocked packets that no rule matched (the default policy),
//	        rate limited, plus rules written with 'log'
//	medium  low, plus packets the default policy allows (new connections)
//	        and invalid packets, rate limited
//	high    medium without rate limiting, plus every packet, rate limited
//	full    high without rate limiting
const (
	LogOff    LogLevel = "off"
	LogLow    LogLevel = "low"
	LogMedium LogLevel = "medium"
	LogHigh   LogLevel = "high"
	LogFull   LogLevel = "full"
)

// LogLevels in increasing order.
var LogLevels = []LogLevel{LogOff, LogLow, LogMedium, LogHigh, LogFull}

// AtLeast reports whether l logs at least as much as o ("" is off).
func (l LogLevel) AtLeast(o LogLevel) bool { return l.rank() >= o.rank() }

func (l LogLevel) rank() int {
	for i, x := range LogLevels {
		if x == l {
			return i
		}
	}
	return 0
}

// parseLogging reads 'logging on|off|low|medium|high|full' ('on' is low,
// as in ufw).
func (p *parser) parseLogging() (Statement, error) {
	p.next()
	t, ok := p.next()
	if !ok {
		return Statement{}, p.errEnd("'logging' needs a level: expected off, low, medium, high or full")
	}
	lv := LogLevel(strings.ToLower(t.Text))
	if lv == "on" {
		lv = LogLow
	}
	if lv.rank() == 0 && lv != LogOff {
		return Statement{}, p.errAt(t, "unknown logging level '%s': expected off, low, medium, high or full", t.Text)
	}
	if t, ok := p.next(); ok {
		return Statement{}, p.errAt(t, "unexpected '%s' after the logging level", t.Text)
	}
	return Statement{Kind: StmtLogging, Logging: lv}, nil
}

// SetLogging writes 'logging LEVEL', replacing the lines that set it
// before (the last one counts), or else putting it before the first rule.
func (d *Document) SetLogging(lv LogLevel) {
	line := "logging " + string(lv)
	var found []int
	firstRule := -1
	for i, l := range d.Lines {
		toks, err := Lex(l)
		if err != nil || len(toks) == 0 {
			continue
		}
		switch strings.ToLower(toks[0].Text) {
		case "logging":
			found = append(found, i)
		case "allow", "deny", "reject", "limit", "route":
			if firstRule < 0 {
				firstRule = i
			}
		}
	}
	switch {
	case len(found) > 0:
		d.Lines[found[len(found)-1]] = line
		for j := len(found) - 2; j >= 0; j-- {
			d.Lines = append(d.Lines[:found[j]], d.Lines[found[j]+1:]...)
		}
	case firstRule >= 0:
		d.Lines = append(d.Lines[:firstRule], append([]string{line}, d.Lines[firstRule:]...)...)
	default:
		d.AppendLine(line)
	}
}
