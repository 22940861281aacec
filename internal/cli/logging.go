package cli

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/moat-fw/moat/internal/policy"
	"github.com/moat-fw/moat/internal/termtext"
)

func (a *app) loggingCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "logging on|off|low|medium|high|full",
		Short: "Set kernel logging of blocked (and more) packets, as ufw's levels",
		Long: `Set the logging level (a 'logging' line in the policy), as ufw defines it:

  off     no logging
  low     packets the default policy blocks, rate limited (3 a minute,
          bursts of 10), and rules written with 'log' or 'log-all' ('on' is low)
  medium  low, plus new connections the default policy allows and invalid
          packets, rate limited
  high    medium without rate limiting, plus every packet, rate limited
  full    high without rate limiting

Lines go to the kernel log with the prefixes [MOAT BLOCK], [MOAT ALLOW],
[MOAT INVALID] and [MOAT AUDIT]; 'moat log' summarizes them. The kernel
logs only from the host's network namespace (net.netfilter.nf_log_all_netns
is 0 by default).`,
		Example:   "  moat logging low\n  moat logging off",
		GroupID:   "rules",
		Args:      cobra.ExactArgs(1),
		ValidArgs: []string{"on", "off", "low", "medium", "high", "full"},
		RunE: func(cmd *cobra.Command, args []string) error {
			st, err := a.parseArgs([]string{"logging", args[0]})
			if err != nil {
				return err
			}
			return a.edit(cmd, func(doc *policy.Document) (string, bool, error) {
				doc.SetLogging(st.Logging)
				if st.Logging == policy.LogOff {
					return "Logging disabled", true, nil
				}
				return fmt.Sprintf("Logging enabled (%s)", st.Logging), true, nil
			})
		},
	}
}

// blockLine is one [MOAT BLOCK] kernel log line.
type blockLine struct {
	Time  string `json:"time,omitempty"`
	Kind  string `json:"kind"`
	Rule  string `json:"rule,omitempty"` // "L12": the line of a rule written with 'log'
	In    string `json:"in,omitempty"`
	Src   string `json:"src"`
	Dst   string `json:"dst"`
	Proto string `json:"proto"`
	DPort int    `json:"dport,omitempty"`
}

// parseKernelLog reads a netfilter LOG line with one of moat's prefixes.
// The fields are KEY=VALUE words that the kernel writes; each value is
// checked (an address must parse, a port be a number), so text that a
// remote sender controls cannot pass for another field.
func parseKernelLog(line string) (blockLine, bool) {
	var b blockLine
	i := strings.Index(line, "[MOAT ")
	if i < 0 {
		return b, false
	}
	// Only the kernel's own lines: the message starts with the prefix, or
	// the syslog program is 'kernel:' (optionally with the kernel's
	// [seconds] stamp). A user name in sshd's line can hold "[MOAT BLOCK]"
	// and even "kernel:", but not before sshd's own "sshd[PID]: ".
	if head := line[:i]; strings.TrimSpace(head) != "" {
		k := strings.Index(head, "kernel: ")
		if k < 0 || strings.Contains(head[:k], ": ") {
			return b, false
		}
		stamp := strings.TrimSpace(head[k+len("kernel: "):])
		if stamp != "" && !(strings.HasPrefix(stamp, "[") && strings.HasSuffix(stamp, "]") && strings.Trim(stamp, "[] .0123456789") == "") {
			return b, false
		}
	}
	rest := line[i+len("[MOAT "):]
	head, rest, ok := strings.Cut(rest, "]")
	if !ok {
		return b, false
	}
	// "[MOAT BLOCK]" (a logging level) or "[MOAT BLOCK L12]" (a rule
	// written with 'log', named by its line).
	kind, rule, _ := strings.Cut(head, " ")
	if rule != "" {
		if n, err := strconv.Atoi(strings.TrimPrefix(rule, "L")); err != nil || n < 1 || !strings.HasPrefix(rule, "L") {
			return b, false
		}
		b.Rule = rule
	}
	switch kind {
	case "BLOCK", "ALLOW", "INVALID", "AUDIT":
	default:
		return b, false
	}
	b.Kind = kind
	for _, f := range strings.Fields(rest) {
		k, v, ok := strings.Cut(f, "=")
		if !ok {
			continue
		}
		switch k {
		case "IN":
			if b.In == "" && len(v) <= 15 {
				b.In = v
			}
		case "SRC":
			if a, err := netip.ParseAddr(v); err == nil && b.Src == "" {
				b.Src = a.String()
			}
		case "DST":
			if a, err := netip.ParseAddr(v); err == nil && b.Dst == "" {
				b.Dst = a.String()
			}
		case "PROTO":
			if b.Proto == "" && len(v) <= 10 {
				b.Proto = strings.ToLower(v)
			}
		case "DPT":
			if n, err := strconv.Atoi(v); err == nil && n > 0 && n < 65536 && b.DPort == 0 {
				b.DPort = n
			}
		}
	}
	if b.Src == "" {
		return b, false
	}
	return b, true
}

// logSummary counts blocked packets by source and by port.
type logSummary struct {
	Lines   int             `json:"lines"`
	Sources []countedString `json:"top_sources"`
	Ports   []countedString `json:"top_ports"`
}

type countedString struct {
	Key   string `json:"key"`
	Count int    `json:"count"`
}

func top(m map[string]int, n int) []countedString {
	out := make([]countedString, 0, len(m))
	for k, c := range m {
		out = append(out, countedString{k, c})
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Count != out[j].Count {
			return out[i].Count > out[j].Count
		}
		return out[i].Key < out[j].Key
	})
	if len(out) > n {
		out = out[:n]
	}
	return out
}

func summarize(r io.Reader) (logSummary, error) {
	srcs, ports := map[string]int{}, map[string]int{}
	var s logSummary
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		b, ok := parseKernelLog(sc.Text())
		if !ok || b.Kind != "BLOCK" {
			continue
		}
		s.Lines++
		srcs[b.Src]++
		if b.DPort > 0 {
			ports[strconv.Itoa(b.DPort)+"/"+b.Proto]++
		} else {
			ports[b.Proto]++
		}
	}
	s.Sources, s.Ports = top(srcs, 10), top(ports, 10)
	return s, sc.Err()
}

func (a *app) logCommand() *cobra.Command {
	var file string
	var follow bool
	cmd := &cobra.Command{
		Use:   "log [--follow] [--json] [--file FILE]",
		Short: "Summarize the packets moat blocked: top sources and ports",
		Long: `Read moat's kernel log lines ([MOAT BLOCK] ...) from the journal
(journalctl -k), or from a file such as /var/log/kern.log, and print the
top blocked sources and ports. --follow prints each new line as it comes
(as JSON with --json). 'moat logging low' turns the logging on.

--json prints {lines, top_sources, top_ports} (each a list of {key,
count}); with --follow, one object a line: {time, kind, rule, in, src,
dst, proto, dport}.`,
		Example: `  moat log
  moat log --file /var/log/kern.log --json
  moat log --follow`,
		GroupID: "inspect",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			r, wait, err := a.kernelLog(ctx, file, follow)
			if err != nil {
				return err
			}
			defer func() { _ = r.Close() }() // a reader of logs
			if follow {
				sc := bufio.NewScanner(r)
				for sc.Scan() {
					b, ok := parseKernelLog(sc.Text())
					if !ok {
						continue
					}
					if a.json {
						if err := a.printJSONLine(b); err != nil {
							return err
						}
						continue
					}
					port := ""
					if b.DPort > 0 {
						port = ":" + strconv.Itoa(b.DPort)
					}
					a.printf("%s %s %s -> %s%s %s\n", b.Kind, b.In, b.Src, b.Dst, port, b.Proto)
				}
				return errors.Join(sc.Err(), wait())
			}
			s, err := summarize(r)
			if err := errors.Join(err, wait()); err != nil {
				return err
			}
			if a.json {
				return a.printJSON(s)
			}
			a.printf("%d blocked packets logged\n\nTop sources:\n", s.Lines)
			for _, c := range s.Sources {
				a.printf("  %7d  %s\n", c.Count, c.Key)
			}
			a.printf("\nTop ports:\n")
			for _, c := range s.Ports {
				a.printf("  %7d  %s\n", c.Count, c.Key)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&file, "file", "", "read this file (e.g. /var/log/kern.log) instead of the journal")
	cmd.Flags().BoolVar(&follow, "follow", false, "print new lines as they come")
	return cmd
}

// printJSONLine prints v as one line of JSON, its strings escaped for a
// terminal (termtext.AppendJSON).
func (a *app) printJSONLine(v any) error {
	return termtext.NewJSONEncoder(a.out).Encode(v)
}

// kernelLog opens the kernel log: a file, or journalctl -k.
func (a *app) kernelLog(ctx context.Context, file string, follow bool) (io.ReadCloser, func() error, error) {
	if file != "" {
		f, err := os.Open(file)
		if err != nil {
			return nil, nil, fmt.Errorf("read kernel log: %w", err)
		}
		if follow {
			if _, err := f.Seek(0, io.SeekEnd); err != nil {
				_ = f.Close() // the seek error is the one to report
				return nil, nil, err
			}
			return &tailReader{ctx: ctx, f: f}, func() error { return nil }, nil
		}
		return f, func() error { return nil }, nil
	}
	// A rule written with 'log' names its line: "[MOAT BLOCK L12]"
	// (TestLogFromJournald).
	args := []string{"-k", "--no-pager", "-o", "short-iso", "--grep", `\[MOAT (BLOCK|ALLOW|INVALID|AUDIT)( L[0-9]+)?\]`}
	if follow {
		args = append(args, "--follow", "--lines=0")
	}
	c := exec.CommandContext(ctx, "journalctl", args...)
	out, err := c.StdoutPipe()
	if err != nil {
		return nil, nil, err
	}
	// journalctl's complaints are passed on, and kept to tell a host
	// without a journal ("No journal files were found.", exit 1 as for
	// no match) from a journal without moat's lines.
	var complaint bytes.Buffer
	c.Stderr = io.MultiWriter(a.errOut, &limitedBuffer{buf: &complaint, max: 4096})
	if err := c.Start(); err != nil {
		return nil, nil, fmt.Errorf("read the journal (journalctl): %w; use --file /var/log/kern.log", err)
	}
	return out, func() error {
		err := c.Wait()
		if strings.Contains(complaint.String(), "No journal files were found") {
			return errors.New("this host has no journal to read: use --file /var/log/kern.log (or where the kernel log goes)")
		}
		var ee *exec.ExitError
		// journalctl exits 1 when --grep matches nothing.
		if errors.As(err, &ee) && ee.ExitCode() == 1 || ctx.Err() != nil {
			return nil
		}
		return err
	}, nil
}

// limitedBuffer keeps the first max bytes written to it.
type limitedBuffer struct {
	buf *bytes.Buffer
	max int
}

func (l *limitedBuffer) Write(p []byte) (int, error) {
	if room := l.max - l.buf.Len(); room > 0 {
		l.buf.Write(p[:min(len(p), room)])
	}
	return len(p), nil
}

// tailReader follows a file that grows (kern.log with --follow).
type tailReader struct {
	ctx context.Context
	f   *os.File
}

func (t *tailReader) Read(p []byte) (int, error) {
	for {
		n, err := t.f.Read(p)
		if n > 0 || (err != nil && err != io.EOF) {
			return n, err
		}
		select {
		case <-t.ctx.Done():
			return 0, io.EOF
		case <-time.After(500 * time.Millisecond):
		}
	}
}

func (t *tailReader) Close() error { return t.f.Close() }
