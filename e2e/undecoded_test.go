package e2e

import (
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/moat-fw/moat/internal/labtest"
	"github.com/moat-fw/moat/internal/nft"
	"github.com/moat-fw/moat/internal/ruleset"
)

// A rule of moat's changed by hand over netlink with an expression
// google/nftables cannot decode: a byteorder step between the port load
// and its compare, so the rule for 80/tcp accepts port 20480 (0x5000)
// instead. Decoded, the rule read exactly as moat's own (the byteorder
// step was dropped without a word): commands and status took the kernel
// for what moat applied. Now the next command and status report it, and
// reload repairs it.
func TestRuleUndecodedExprByHand(t *testing.T) {
	e := newEnv(t, "nftables", false)
	e.apply("default deny incoming\nallow 22/tcp\nallow 80/tcp\n")
	e.expect(false, "client tcp 192.0.2.1:80 open", "client tcp [2001:db8::1]:80 open")
	swap := labtest.RawExpr{Name: "byteorder", Data: labtest.ExprAttrs(map[uint16]uint32{unix.NFTA_BYTEORDER_SREG: unix.NFT_REG_1,
		unix.NFTA_BYTEORDER_DREG: unix.NFT_REG_1, unix.NFTA_BYTEORDER_OP: unix.NFT_BYTEORDER_HTON,
		unix.NFTA_BYTEORDER_LEN: 2, unix.NFTA_BYTEORDER_SIZE: 2})}
	if err := e.topo.Server.Do(func() error {
		return labtest.ReplaceRuleRaw(unix.NFPROTO_INET, nft.TableName, func(_ string, _ uint64, udata []byte, _ []string) bool {
			return ruleset.OriginID(nft.RuleComment(udata)) == "L3"
		}, func(es []labtest.RawExpr) []labtest.RawExpr {
			// Before the last compare (the port's).
			for i := len(es) - 1; i >= 0; i-- {
				if es[i].Name == "cmp" {
					return append(es[:i:i], append([]labtest.RawExpr{swap}, es[i:]...)...)
				}
			}
			t.Error("no compare in moat's rule L3")
			return es
		})
	}); err != nil {
		t.Fatal(err)
	}
	e.expect(false, "client tcp 192.0.2.1:80 timeout", "client tcp [2001:db8::1]:80 timeout", "client tcp 192.0.2.1:22 open")
	// A locked command that applies nothing (the rule is there already)
	// must not take the changed rule for moat's own.
	if out, err := e.moat("allow", "22/tcp"); !strings.Contains(out, "changed outside moat") {
		t.Errorf("allow after a byteorder step was added by hand did not notice (err %v):\n%s", err, out)
	}
	out := e.mustMoat("status")
	if !strings.Contains(out, "changed outside moat (moat reload repairs it)") || !strings.Contains(out, "1 rule changed in place (tag and verdict kept): L3") ||
		!strings.Contains(out, "its nftables expressions now: meta, cmp, payload, byteorder, cmp") {
		t.Errorf("status after a byteorder step was added by hand:\n%s", out)
	}
	e.mustMoat("reload")
	if st := e.truth(); !st.InSync {
		t.Errorf("status after reload: %+v", st)
	}
	e.expect(false, "client tcp 192.0.2.1:80 open", "client tcp [2001:db8::1]:80 open")
}
