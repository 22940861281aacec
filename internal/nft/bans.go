package nft

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os/exec"
	"slices"
	"strings"
	"time"

	"github.com/moat-fw/moat/internal/ruleset"
)

// Ban sets elements are written with our own nft script: knftables has no
// per-element timeout or comment.

// Ban adds addresses to the ban sets in one transaction. A ban marked
// Replace gets its new timeout even if the address is banned already (add,
// delete, add: nft's add keeps an existing element as it is; the delete
// makes the commit wait for the kernel to release the old element, about
// 15 ms, so it is done only when asked).
func (b *Backend) Ban(ctx context.Context, bans []ruleset.Ban) error {
	if len(bans) == 0 {
		return nil
	}
	last := map[netip.Addr]ruleset.Ban{}
	for _, ban := range bans {
		last[ban.Addr] = ban
	}
	bySet := map[string][]string{}
	replace := map[string][]string{}
	keys := map[string][]string{}
	for a, ban := range last {
		set := ruleset.BanSetFor(a)
		el := fmt.Sprintf("%s timeout %dms", a, max(ban.Timeout.Milliseconds(), 1000))
		if r := ruleset.CleanReason(ban.Reason); r != "" {
			el += fmt.Sprintf(" comment %q", r)
		}
		bySet[set] = append(bySet[set], el)
		if ban.Replace {
			replace[set] = append(replace[set], el)
			keys[set] = append(keys[set], a.String())
		}
	}
	var script strings.Builder
	for set, els := range bySet {
		fmt.Fprintf(&script, "add element inet %s %s { %s }\n", TableName, set, strings.Join(els, ", "))
		if len(keys[set]) > 0 {
			fmt.Fprintf(&script, "delete element inet %s %s { %s }\n", TableName, set, strings.Join(keys[set], ", "))
			fmt.Fprintf(&script, "add element inet %s %s { %s }\n", TableName, set, strings.Join(replace[set], ", "))
		}
	}
	return b.runScript(ctx, "ban", script.String())
}

// Unban removes addresses from the ban sets (absent ones are fine).
func (b *Backend) Unban(ctx context.Context, addrs []netip.Addr) error {
	if len(addrs) == 0 {
		return nil
	}
	bySet := map[string][]string{}
	for _, a := range addrs {
		bySet[ruleset.BanSetFor(a)] = append(bySet[ruleset.BanSetFor(a)], a.String())
	}
	var script strings.Builder
	for set, keys := range bySet {
		slices.Sort(keys)
		uniq := slices.Compact(keys)
		var els []string
		for _, k := range uniq {
			els = append(els, k+" timeout 1s")
		}
		fmt.Fprintf(&script, "add element inet %s %s { %s }\n", TableName, set, strings.Join(els, ", "))
		fmt.Fprintf(&script, "delete element inet %s %s { %s }\n", TableName, set, strings.Join(uniq, ", "))
	}
	return b.runScript(ctx, "unban", script.String())
}

func (b *Backend) runScript(ctx context.Context, what, script string) error {
	var stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(script)
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(stderr.String())
		if strings.Contains(msg, "No such file or directory") {
			return fmt.Errorf("nftables %s: moat's table is not loaded ('moat enable' first): %s", what, firstLine(msg))
		}
		return fmt.Errorf("nftables %s: %w: %s", what, err, firstLine(msg))
	}
	return nil
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	return line
}

// Bans lists the banned addresses with the time left.
func (b *Backend) Bans(ctx context.Context) ([]ruleset.Ban, error) {
	var out []ruleset.Ban
	for _, set := range []string{ruleset.BanSet4, ruleset.BanSet6} {
		var stdout, stderr bytes.Buffer
		cmd := exec.CommandContext(ctx, "nft", "-j", "list", "set", "inet", TableName, set)
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		if err := cmd.Run(); err != nil {
			return nil, fmt.Errorf("nftables: list bans: %w: %s ('moat enable' loads moat's table)", err, firstLine(strings.TrimSpace(stderr.String())))
		}
		bans, err := parseBanSet(stdout.Bytes())
		if err != nil {
			return nil, err
		}
		out = append(out, bans...)
	}
	return out, nil
}

func parseBanSet(data []byte) ([]ruleset.Ban, error) {
	var doc struct {
		Nftables []struct {
			Set *struct {
				Elem []json.RawMessage `json:"elem"`
			} `json:"set"`
		} `json:"nftables"`
	}
	if err := json.Unmarshal(data, &doc); err != nil {
		return nil, fmt.Errorf("nftables: parse bans: %w", err)
	}
	var out []ruleset.Ban
	for _, o := range doc.Nftables {
		if o.Set == nil {
			continue
		}
		for _, raw := range o.Set.Elem {
			var el struct {
				Elem struct {
					Val     string `json:"val"`
					Timeout int64  `json:"timeout"`
					Expires int64  `json:"expires"`
					Comment string `json:"comment"`
				} `json:"elem"`
			}
			var plain string
			if json.Unmarshal(raw, &plain) == nil {
				el.Elem.Val = plain
			} else if err := json.Unmarshal(raw, &el); err != nil {
				return nil, fmt.Errorf("nftables: parse ban element: %w", err)
			}
			a, err := netip.ParseAddr(el.Elem.Val)
			if err != nil {
				continue
			}
			out = append(out, ruleset.Ban{Addr: a, Timeout: time.Duration(el.Elem.Timeout) * time.Second,
				Expires: time.Duration(el.Elem.Expires) * time.Second, Reason: el.Elem.Comment})
		}
	}
	return out, nil
}
