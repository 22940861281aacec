package cli

import (
	"fmt"
	"net"
	"slices"
	"sort"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/moat-fw/moat/internal/policy"
)

// Shell completion: cobra's generators ('moat completion bash|zsh|fish')
// call back into these functions, so completions know the rule grammar,
// the protocols, /etc/services, the application profiles and the rules of
// the policy file.

const noFiles = cobra.ShellCompDirectiveNoFileComp

// completeRule completes the words of a rule after its action word (for
// 'route', after 'route'). words are the rule's words typed so far.
func (a *app) completeRule(words []string, toComplete string, route bool) []string {
	seen := map[string]bool{}
	for _, w := range words {
		seen[strings.ToLower(w)] = true
	}
	if n := len(words); n > 0 {
		switch strings.ToLower(words[n-1]) {
		case "proto":
			return filterPrefix(policy.Protocols, toComplete)
		case "from", "to":
			return filterPrefix([]string{"any\tevery address"}, toComplete)
		case "port":
			return filterPrefix(a.serviceCompletions(), toComplete)
		case "app":
			return filterPrefix(a.appCompletions(), toComplete)
		case "on":
			return filterPrefix(interfaceNames(), toComplete)
		case "comment", "rate":
			return nil
		}
	}
	if route && len(words) == 0 {
		// 'route allow ...': the action comes first.
		return filterPrefix([]string{"allow", "deny", "reject"}, toComplete)
	}
	var out []string
	rest := words
	if route {
		rest = words[1:]
	}
	full := false
	for _, w := range rest {
		switch strings.ToLower(w) {
		case "proto", "from", "to":
			full = true
		}
	}
	if !full && len(rest) == len(leadingWords(rest)) {
		// Still in the head of the rule: direction, interface, logging,
		// then a port, service or profile (simple form) or a clause.
		if !seen["in"] && !seen["out"] {
			out = append(out, "in\tincoming traffic (default)", "out\toutgoing traffic")
		}
		if !seen["on"] {
			out = append(out, "on\ton an interface")
		}
		if !seen["log"] && !seen["log-all"] {
			out = append(out, "log\tlog new connections", "log-all\tlog all packets")
		}
		out = append(out, a.serviceCompletions()...)
		out = append(out, a.appCompletions()...)
	}
	for _, kw := range []string{"proto", "from", "to"} {
		if !seen[kw] {
			out = append(out, kw)
		}
	}
	if n := len(words); n >= 2 {
		// Right after 'from ADDR' or 'to ADDR': that address's port.
		switch strings.ToLower(words[n-2]) {
		case "from", "to":
			out = append(out, "port", "app")
		}
	}
	if !seen["comment"] {
		out = append(out, "comment\ta note kept with the rule")
	}
	return filterPrefix(out, toComplete)
}

// leadingWords returns the rule's head words: in/out, on IFACE, log.
func leadingWords(words []string) []string {
	var head []string
	for i := 0; i < len(words); i++ {
		switch strings.ToLower(words[i]) {
		case "in", "out", "log", "log-all":
			head = append(head, words[i])
		case "on":
			head = append(head, words[i])
			if i+1 < len(words) {
				i++
				head = append(head, words[i])
			}
		default:
			return head
		}
	}
	return head
}

// serviceCompletions lists /etc/services names with their ports.
func (a *app) serviceCompletions() []string {
	svc, err := policy.SystemServices()
	if err != nil {
		return nil
	}
	names := make([]string, 0, len(svc))
	for name, s := range svc {
		names = append(names, fmt.Sprintf("%s\t%d/%s", name, s.Port, strings.Join(s.Protos, ",")))
	}
	sort.Strings(names)
	return names
}

// interfaceNames lists this namespace's interfaces.
func interfaceNames() []string {
	ifs, err := net.Interfaces()
	if err != nil {
		return nil
	}
	var out []string
	for _, i := range ifs {
		out = append(out, i.Name)
	}
	return out
}

// ruleNumberCompletions lists the policy's rules as "N<TAB>rule text".
func (a *app) ruleNumberCompletions(toComplete string) []string {
	doc, err := a.loadDocument()
	if err != nil {
		return nil
	}
	var out []string
	for i, text := range doc.RuleTexts() {
		out = append(out, strconv.Itoa(i+1)+"\t"+strings.ReplaceAll(text, "\t", " "))
	}
	return filterPrefix(out, toComplete)
}

// filterPrefix keeps the candidates (before any TAB) that start with
// prefix; the shells filter too, but fish and zsh show descriptions of all.
func filterPrefix(cands []string, prefix string) []string {
	if prefix == "" {
		return cands
	}
	var out []string
	for _, c := range cands {
		name, _, _ := strings.Cut(c, "\t")
		if strings.HasPrefix(strings.ToLower(name), strings.ToLower(prefix)) {
			out = append(out, c)
		}
	}
	return out
}

// addCompletions wires the completion functions to the commands.
func (a *app) addCompletions(root *cobra.Command) {
	actions := []string{"allow", "deny", "reject", "limit", "route"}
	for _, c := range root.Commands() {
		name := c.Name()
		switch {
		case slices.Contains(actions, name):
			route := name == "route"
			c.ValidArgsFunction = func(cmd *cobra.Command, args []string, toComplete string) ([]string, cobra.ShellCompDirective) {
				if route {
					// ufw's 'route insert N RULE' and 'route delete N|RULE'.
					switch {
					case len(args) == 0:
						return filterPrefix([]string{"allow", "deny", "reject", "insert\tbefore rule N", "delete\trule N, or a rule"}, toComplete), noFiles
					case args[0] == "insert" && len(args) == 1:
						return a.ruleNumberCompletions(toComplete), noFiles | cobra.ShellCompDirectiveKeepOrder
					case args[0] == "insert":
						return a.completeRule(args[2:], toComplete, true), noFiles
					case args[0] == "delete" && len(args) == 1:
						return append(a.ruleNumberCompletions(toComplete), filterPrefix([]string{"allow", "deny", "reject"}, toComplete)...), noFiles | cobra.ShellCompDirectiveKeepOrder
					case args[0] == "delete":
						if _, err := strconv.Atoi(args[1]); err == nil {
							return nil, noFiles
						}
						return a.completeRule(args[1:], toComplete, true), noFiles
					}
				}
				return a.completeRule(args, toComplete, route), noFiles
			}
		case name == "insert":
			c.ValidArgsFunction = func(cmd *cobra.Command, args []string, toComplete string) ([]string, cobra.ShellCompDirective) {
				switch len(args) {
				case 0:
					return a.ruleNumberCompletions(toComplete), noFiles | cobra.ShellCompDirectiveKeepOrder
				case 1:
					return filterPrefix(actions, toComplete), noFiles
				}
				return a.completeRule(args[2:], toComplete, strings.EqualFold(args[1], "route")), noFiles
			}
		case name == "prepend":
			c.ValidArgsFunction = func(cmd *cobra.Command, args []string, toComplete string) ([]string, cobra.ShellCompDirective) {
				if len(args) == 0 {
					return filterPrefix(actions, toComplete), noFiles
				}
				return a.completeRule(args[1:], toComplete, strings.EqualFold(args[0], "route")), noFiles
			}
		case name == "delete":
			c.ValidArgsFunction = func(cmd *cobra.Command, args []string, toComplete string) ([]string, cobra.ShellCompDirective) {
				if len(args) == 0 {
					return append(a.ruleNumberCompletions(toComplete), filterPrefix(actions, toComplete)...), noFiles | cobra.ShellCompDirectiveKeepOrder
				}
				if _, err := strconv.Atoi(args[0]); err == nil {
					return nil, noFiles
				}
				return a.completeRule(args[1:], toComplete, strings.EqualFold(args[0], "route")), noFiles
			}
		case name == "default":
			c.ValidArgsFunction = func(cmd *cobra.Command, args []string, toComplete string) ([]string, cobra.ShellCompDirective) {
				switch len(args) {
				case 0:
					return filterPrefix([]string{"allow", "deny", "reject"}, toComplete), noFiles
				case 1:
					return filterPrefix([]string{"incoming", "outgoing", "routed"}, toComplete), noFiles
				}
				return nil, noFiles
			}
		case name == "status":
			c.ValidArgsFunction = func(cmd *cobra.Command, args []string, toComplete string) ([]string, cobra.ShellCompDirective) {
				if len(args) == 0 {
					return filterPrefix([]string{"numbered", "verbose"}, toComplete), noFiles
				}
				return nil, noFiles
			}
		}
	}
}
