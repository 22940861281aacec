package ipt

import (
	"bufio"
	"bytes"
	"fmt"
	"slices"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/moat-fw/moat/internal/termtext"
)

// CheckSave says whether iptables-save (prog: iptables-save or
// ip6tables-save) printed every table it read. With iptables-nft, a table
// holding a rule iptables cannot read (an nftables expression it does not
// know, added by hand with nft: "do not touch!") is printed as one
// comment line, "# Table `filter' is incompatible, use 'nft' tool.", and
// iptables-save still exits 0. Read as a table without moat's chains, it
// made an apply take them for absent (another jump into them each time),
// status report an apply cut between the two families, and a snapshot
// for a rollback hold none of them: it is an error naming the table and
// how to see the rule, and each rule (chain and handle) and base chain
// iptables cannot read, found over netlink.
func CheckSave(prog string, out []byte) error {
	if !bytes.Contains(out, []byte("is incompatible")) {
		return nil
	}
	family := "ip"
	if strings.HasPrefix(prog, "ip6") {
		family = "ip6"
	}
	named := incompatibleNamed(out)
	if len(named) == 0 {
		return nil
	}
	table := named[0] // the first: the error names one table
	proto := uint8(unix.NFPROTO_IPV4)
	if family == "ip6" {
		proto = unix.NFPROTO_IPV6
	}
	// Which rules: read over netlink (best effort; the table's name
	// alone when that fails or finds none).
	parts, _ := findIncompatible(proto, table)
	if len(parts) == 0 {
		return &IncompatibleError{Family: family, Table: table, msg: fmt.Sprintf("%s cannot print table %s %s: it holds a rule iptables cannot read (added with nft?); see it with 'nft -a list table %s %s' and delete it",
			prog, family, table, family, table)}
	}
	for i, p := range parts { // read from the kernel: the names say anything
		parts[i] = termtext.Printable(p)
	}
	const most = 10
	more := ""
	if len(parts) > most {
		more = fmt.Sprintf("\n  and %d more", len(parts)-most)
		parts = parts[:most]
	}
	return &IncompatibleError{Family: family, Table: table, Parts: parts, msg: fmt.Sprintf("%s cannot print table %s %s, so moat cannot read its own chains there: iptables cannot read\n  %s%s\n"+
		"(added with nft?) see them with 'nft -a list table %s %s', and delete a rule with 'nft delete rule %s %s CHAIN handle N'",
		prog, family, table, strings.Join(parts, "\n  "), more, family, table, family, table)}
}

// incompatibleNamed lists, in order and once each, the tables that
// iptables-save's output out says it cannot print ("# Table `T' is
// incompatible, use 'nft' tool."). iptables-save names only its own
// tables there; a rule's comment holding a newline prints a line of that
// start too (with its quote escaped, "\'"), which says anything, terminal
// controls included: only names of iptables' tables count.
func incompatibleNamed(out []byte) []string {
	var named []string
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		rest, ok := strings.CutPrefix(sc.Text(), "# Table `")
		if !ok {
			continue
		}
		table, tail, ok := strings.Cut(rest, "'")
		if _, known := builtinHooks[table]; ok && known && strings.Contains(tail, "is incompatible") && !slices.Contains(named, table) {
			named = append(named, table)
		}
	}
	return named
}

// IncompatibleError is CheckSave's error: iptables-save could not print
// a table (the first one found) of a family.
type IncompatibleError struct {
	Family string // "ip" or "ip6"
	Table  string
	// Parts are what iptables cannot read there, read over netlink and
	// made printable (none when that read failed).
	Parts []string
	msg   string
}

func (e *IncompatibleError) Error() string { return e.msg }

// findIncompatible is incompatibleParts (a variable for the tests).
var findIncompatible = incompatibleParts
