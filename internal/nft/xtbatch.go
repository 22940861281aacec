package nft

import (
	"errors"
	"os"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// XtBatch is one nftables transaction written into the tables of
// iptables-nft (families ip and ip6) by the iptables backend: MOAT-GEN's
// record of both families in one commit, instead of an iptables-restore
// process per family. It shares batch's transaction code.
type XtBatch struct{ b batch }

// Add appends one message (typ: NFT_MSG_*) of an nftables family
// (NFPROTO_IPV4, NFPROTO_IPV6).
func (x *XtBatch) Add(family uint8, typ uint16, flags netlink.HeaderFlags, attrs []netlink.Attribute) {
	n := len(x.b.msgs)
	x.b.add(typ, flags, attrs)
	if len(x.b.msgs) > n {
		x.b.msgs[n].Data[0] = family
	}
}

// Send commits the messages in one transaction, or none of them.
func (x *XtBatch) Send() error { return x.b.send(0) }

// AppendAttr appends one netlink attribute (header in native byte order,
// value, padding to 4 bytes): the iptables backend builds ipset's
// messages with it too.
func AppendAttr(b []byte, typ uint16, v []byte) []byte { return appendAttr(b, typ, v) }

// SendAt is Send at the ruleset generation gen: the kernel commits the
// transaction only if the generation is still gen, else nothing
// (GenerationMoved says so). gen 0 checks nothing.
func (x *XtBatch) SendAt(gen uint32) error { return x.b.send(gen) }

// Len is the number of messages added.
func (x *XtBatch) Len() int { return len(x.b.msgs) }

// GenerationMoved says whether err is SendAt's refusal because the
// ruleset generation had moved: nothing was committed.
func GenerationMoved(err error) bool { return errors.Is(err, errGenerationMoved) }

// AckLost says whether err is a transaction whose answer was lost (the
// kernel dropped its acks, or none came in time): it was handled whole,
// committed or not, and what it left must be read.
func AckLost(err error) bool {
	return errors.Is(err, unix.ENOBUFS) || errors.Is(err, os.ErrDeadlineExceeded)
}
