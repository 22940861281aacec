package nft

import (
	"encoding/hex"
	"errors"
	"fmt"
	"sync"

	gnft "github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// Rule is a rule as the kernel dumps it, decoded by google/nftables, with
// what that decoding leaves out. google/nftables v0.3.0 drops, without a
// word, every expression it cannot decode (byteorder, socket, osf, rt,
// last, any name it does not know, an expression without data): a rule
// made by hand over netlink with a byteorder step before moat's compare,
// or an rt or last match, decoded exactly as moat's own rule, and the
// drift check and the fingerprint did not see it.
type Rule struct {
	*gnft.Rule
	// Undecoded is empty when Exprs holds every expression of the rule;
	// else it lists every expression as the kernel dumped it, in order.
	Undecoded []RawExpr
}

// RawExpr is an expression as the kernel dumps it.
type RawExpr struct {
	Name string
	Data []byte // NFTA_EXPR_DATA (its nested attributes)
}

// String is the expression's name (quoted: the kernel's text) and, but
// for the expressions whose data the traffic changes (counter, last,
// quota, connlimit), its data in hex.
func (e RawExpr) String() string {
	if volatileExprs[e.Name] || len(e.Data) == 0 {
		return fmt.Sprintf("%q", e.Name)
	}
	return fmt.Sprintf("%q %s", e.Name, hex.EncodeToString(e.Data))
}

// Kinds is the names of all the rule's expressions when google/nftables
// could not decode some (nil when it decoded every one).
func (r Rule) Kinds() []string {
	var out []string
	for _, e := range r.Undecoded {
		out = append(out, e.Name)
	}
	return out
}

// volatileExprs are the expressions whose data the traffic changes.
var volatileExprs = map[string]bool{"counter": true, "last": true, "quota": true, "connlimit": true}

// GetRules reads the rules of chain ch of table t as c.GetRules does, in
// one dump over c's socket when c is the shared connection Conn lent
// (else over a socket of its own), with the expressions google/nftables
// leaves out (Rule.Undecoded).
func GetRules(c *gnft.Conn, t *gnft.Table, ch *gnft.Chain) ([]Rule, error) {
	attrs, err := netlink.MarshalAttributes([]netlink.Attribute{
		{Type: unix.NFTA_RULE_TABLE, Data: []byte(t.Name + "\x00")},
		{Type: unix.NFTA_RULE_CHAIN, Data: []byte(ch.Name + "\x00")},
	})
	if err != nil {
		return nil, err
	}
	req := netlink.Message{
		Header: netlink.Header{
			Type:  netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_GETRULE),
			Flags: netlink.Request | netlink.Dump,
		},
		Data: append([]byte{byte(t.Family), unix.NFNETLINK_V0, 0, 0}, attrs...),
	}
	var msgs []netlink.Message
	if nl := lentSocket(c); nl != nil {
		msgs, err = nl.Execute(req)
	} else {
		nl, derr := netlink.Dial(unix.NETLINK_NETFILTER, nil)
		if derr != nil {
			return nil, fmt.Errorf("nftables: %w", derr)
		}
		msgs, err = nl.Execute(req)
		_ = nl.Close() // read only
	}
	if err != nil {
		return nil, err
	}
	return decodeRules(t, ch, msgs)
}

// lentSocket is the socket of c when c is the shared connection (lent to
// the caller), else nil.
func lentSocket(c *gnft.Conn) *netlink.Conn {
	shared.mu.Lock()
	defer shared.mu.Unlock()
	if c != nil && c == shared.c && shared.busy {
		return shared.nl
	}
	return nil
}

// decodeRules decodes the NFT_MSG_NEWRULE messages of a rule dump: with
// google/nftables (its GetRules fed msgs), and each rule's expressions
// counted in the raw attributes.
func decodeRules(t *gnft.Table, ch *gnft.Chain, msgs []netlink.Message) ([]Rule, error) {
	replies := make([]netlink.Message, 0, len(msgs))
	raw := make([][]RawExpr, 0, len(msgs))
	for _, m := range msgs {
		if m.Header.Type == netlink.Done || m.Header.Type == netlink.Error {
			continue
		}
		exprs, err := rawExprs(m.Data)
		if err != nil {
			return nil, fmt.Errorf("nftables: read chain %s: %w", ch.Name, err)
		}
		raw = append(raw, exprs)
		m.Header.Flags = 0 // one reply: google/nftables reads it whole
		replies = append(replies, m)
	}
	if len(replies) == 0 {
		return nil, nil
	}
	rules, err := decode(t, ch, replies)
	if err != nil {
		return nil, fmt.Errorf("nftables: read chain %s: %w", ch.Name, err)
	}
	if len(rules) != len(raw) {
		return nil, fmt.Errorf("nftables: read chain %s: %d rules dumped, %d decoded", ch.Name, len(raw), len(rules))
	}
	out := make([]Rule, len(rules))
	for i, r := range rules {
		out[i] = Rule{Rule: r}
		if !allDecoded(r.Exprs, raw[i]) {
			out[i].Undecoded = raw[i]
		}
	}
	return out, nil
}

// allDecoded says whether exprs, google/nftables' decoding of a rule,
// holds every expression of raw, the rule as dumped: as many, and as
// many within each dynset (its per-element expressions, which
// google/nftables decodes alike, dropping what it cannot).
func allDecoded(exprs []expr.Any, raw []RawExpr) bool {
	if len(exprs) != len(raw) {
		return false
	}
	for i, e := range raw {
		if e.Name != "dynset" {
			continue
		}
		d, ok := exprs[i].(*expr.Dynset)
		if !ok {
			return false
		}
		n := 0
		err := eachAttr(e.Data, func(typ uint16, v []byte) error {
			switch typ {
			case unix.NFTA_DYNSET_EXPR:
				n++
			case nftaDynsetExpressions:
				return eachAttr(v, func(typ uint16, _ []byte) error {
					if typ == unix.NFTA_LIST_ELEM {
						n++
					}
					return nil
				})
			}
			return nil
		})
		if err != nil || n != len(d.Exprs) {
			return false
		}
	}
	return true
}

// nftaDynsetExpressions is NFTA_DYNSET_EXPRESSIONS (a list of
// expressions; NFTA_DYNSET_EXPR holds one).
const nftaDynsetExpressions = 10

// decoder is a google/nftables connection whose socket is a fake that
// answers every request with replies: its GetRules decodes a dump made
// elsewhere. Made once (a fake socket seeds a random source too).
var decoder struct {
	mu      sync.Mutex
	c       *gnft.Conn
	replies []netlink.Message
}

// decode is google/nftables' decoding of the rule messages replies.
func decode(t *gnft.Table, ch *gnft.Chain, replies []netlink.Message) ([]*gnft.Rule, error) {
	decoder.mu.Lock()
	defer decoder.mu.Unlock()
	if decoder.c == nil {
		c, err := gnft.New(gnft.AsLasting(), gnft.WithTestDial(func([]netlink.Message) ([]netlink.Message, error) {
			return decoder.replies, nil // decoder.mu is held
		}))
		if err != nil {
			return nil, err
		}
		decoder.c = c
	}
	decoder.replies = replies
	defer func() { decoder.replies = nil }()
	rules, err := decoder.c.GetRules(t, ch)
	if err != nil {
		// Whatever is left on the fake socket goes with it.
		_ = decoder.c.CloseLasting()
		decoder.c = nil
	}
	return rules, err
}

// rawExprs lists the expressions of one NFT_MSG_NEWRULE message (its
// nfgenmsg header first).
func rawExprs(data []byte) ([]RawExpr, error) {
	if len(data) < 4 {
		return nil, errors.New("rule message too short")
	}
	var out []RawExpr
	err := eachAttr(data[4:], func(typ uint16, v []byte) error {
		if typ != unix.NFTA_RULE_EXPRESSIONS {
			return nil
		}
		return eachAttr(v, func(typ uint16, v []byte) error {
			if typ != unix.NFTA_LIST_ELEM {
				return nil
			}
			var e RawExpr
			if err := eachAttr(v, func(typ uint16, v []byte) error {
				switch typ {
				case unix.NFTA_EXPR_NAME:
					e.Name = cString(v)
				case unix.NFTA_EXPR_DATA:
					e.Data = append([]byte(nil), v...)
				}
				return nil
			}); err != nil {
				return err
			}
			out = append(out, e)
			return nil
		})
	})
	return out, err
}

func cString(b []byte) string {
	for i, c := range b {
		if c == 0 {
			return string(b[:i])
		}
	}
	return string(b)
}
