package ipt

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/bits"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/moat-fw/moat/internal/nft"
	"github.com/moat-fw/moat/internal/statedir"
)

// The digest of an ipset as the kernel holds it, read over netlink: its
// header without the hash seed, hash size, references and size in memory
// (none of them part of what was loaded: the same networks loaded again
// differ in them), the number of its members, and the sum of a keyed
// 128-bit hash of each member. A sum does not depend on the order the
// kernel dumps the members in (the hash order, which each set's random
// seed decides), so they are neither kept nor sorted: the dump is read
// one part at a time into one buffer and each member hashed where it
// lies. Before, the members were collected, sorted and hashed in order:
// 20 to 30 ms of a command's CPU at 100,000 networks, on top of the
// kernel's 25 to 30 ms for the dump itself.
//
// The member hash is keyed (digestKeyFile, random, in the state
// directory): a sum of hashes anyone can compute lets one craft members
// whose hashes cancel out (the generalized birthday problem), so that a
// set changed by hand keeps its digest; without the key, which a process
// that can change ipsets but not read moat's state directory does not
// have, the digest of a changed set is as good as random.

// digestKeyFile holds the key of the ipset digests (16 random bytes).
const digestKeyFile = "ipset-digest.key"

// memberHasher hashes set members under one key (one goroutine at a
// time: x is its scratch block, which the cipher's interface would
// otherwise make escape, one allocation a member).
type memberHasher struct {
	block cipher.Block
	key   []byte
	x     [16]byte
}

func newMemberHasher(key []byte) *memberHasher {
	block, err := aes.NewCipher(key)
	if err != nil {
		panic(fmt.Sprintf("ipset digest key of %d bytes", len(key))) // never: the keys are 16 bytes
	}
	return &memberHasher{block: block, key: key}
}

// digestKey is the key of the ipset digests, read from KeyDir or made
// there (once per Backend). A key that others can read is replaced by a
// new one (statedir.Key). A key that cannot be read
// or written is replaced by a random one for this process: its digests
// then differ from any recorded, and the drift check compares in full
// (slower, never wrong).
func (b *Backend) digestKey() *memberHasher {
	if b.hasher != nil {
		return b.hasher
	}
	if b.KeyDir == "" {
		// Tests, the scratch namespaces of the drift check: a fixed
		// key, whose digests hold only as long as nothing crafts
		// collisions.
		b.hasher = newMemberHasher(make([]byte, 16))
		return b.hasher
	}
	key := statedir.Key(b.KeyDir, digestKeyFile, 16)
	b.hasher = newMemberHasher(key)
	return b.hasher
}

// clone is a memberHasher with the same key for another goroutine (x is
// each one's scratch).
func (mh *memberHasher) clone() *memberHasher { return newMemberHasher(mh.key) }

// plain is the hash of a member that is a network and nothing else:
// AES-CBC-MAC of two blocks, the address (IPv4 mapped into IPv6), then
// its prefix length and whether it is IPv4 (apart from ::ffff:a.b.c.d).
func (mh *memberHasher) plain(a [16]byte, bits int, is4 bool) (lo, hi uint64) {
	x := mh.x[:]
	copy(x, a[:])
	mh.block.Encrypt(x, x)
	x[0] ^= byte(bits + 1)
	x[1] ^= 'p'
	if is4 {
		x[2] ^= '4'
	}
	mh.block.Encrypt(x, x)
	return binary.LittleEndian.Uint64(x[:8]), binary.LittleEndian.Uint64(x[8:])
}

// prefix is plain of a network.
func (mh *memberHasher) prefix(p netip.Prefix) (lo, hi uint64) {
	return mh.plain(p.Addr().As16(), p.Bits(), p.Addr().Is4())
}

// member is the hash of a member as parseMember read it: plain when it
// has no other attribute, else a keyed SHA-256 of it all (members with a
// flag, a timeout, a comment, a port: made by hand, rare).
func (mh *memberHasher) member(m ipsetMember) (lo, hi uint64) {
	if m.extra == "" && m.p.IsValid() {
		return mh.prefix(m.p)
	}
	h := sha256.New()
	h.Write(mh.key)
	a := m.p.Addr().As16()
	h.Write(a[:])
	fam := byte('6')
	if m.p.Addr().Is4() {
		fam = '4'
	}
	h.Write([]byte{'x', byte(m.p.Bits() + 1), fam})
	h.Write([]byte(m.extra))
	var sum [sha256.Size]byte
	h.Sum(sum[:0])
	return binary.LittleEndian.Uint64(sum[:8]), binary.LittleEndian.Uint64(sum[8:16])
}

// memberSum is the number of members and the sum of their hashes
// (modulo 2^128).
type memberSum struct {
	n      int
	lo, hi uint64
}

func (s *memberSum) add(lo, hi uint64) {
	var c uint64
	s.lo, c = bits.Add64(s.lo, lo, 0)
	s.hi, _ = bits.Add64(s.hi, hi, c)
	s.n++
}

// sub takes a member's hash out of the sum.
func (s *memberSum) sub(lo, hi uint64) {
	var b uint64
	s.lo, b = bits.Sub64(s.lo, lo, 0)
	s.hi, _ = bits.Sub64(s.hi, hi, b)
	s.n--
}

// sumOf is the sum of networks' hashes, as loaded (masked).
func (mh *memberHasher) sumOf(nets []netip.Prefix) memberSum {
	var sum memberSum
	for _, p := range nets {
		sum.add(mh.prefix(p.Masked()))
	}
	return sum
}

// keyID names the key (not secret: a hash of it), so that a sum kept
// under another key is not taken for one under this.
func (mh *memberHasher) keyID() string {
	h := sha256.Sum256(append([]byte("moat ipset digest key id\n"), mh.key...))
	return hex.EncodeToString(h[:6])
}

// The element record of a policy ipset (setstore, its Ranges field, which
// nftables alone uses for ranges) keeps the sum of its networks' hashes
// under the digest key: a change of the set's networks then gives the
// sum of the new ones from the adds and deletes, and the fingerprint
// after it hashes 200 networks instead of 100,000 (3 ms at 100,000).
const sumTag = "sum1"

// encodeSum is sum as kept in the element record (no blank).
func (mh *memberHasher) encodeSum(sum memberSum) string {
	return fmt.Sprintf("%s.%s.%d.%016x%016x", sumTag, mh.keyID(), sum.n, sum.hi, sum.lo)
}

// decodeSum reads a sum kept by encodeSum under this key.
func (mh *memberHasher) decodeSum(s string) (memberSum, bool) {
	f := strings.Split(s, ".")
	if len(f) != 4 || f[0] != sumTag || f[1] != mh.keyID() || len(f[3]) != 32 {
		return memberSum{}, false
	}
	n, err1 := strconv.Atoi(f[2])
	hi, err2 := strconv.ParseUint(f[3][:16], 16, 64)
	lo, err3 := strconv.ParseUint(f[3][16:], 16, 64)
	if err1 != nil || err2 != nil || err3 != nil || n < 0 {
		return memberSum{}, false
	}
	return memberSum{n: n, hi: hi, lo: lo}, true
}

// writeSetDigest writes the digest of a set: missing, or its sorted
// header lines and its members' sum. The form is moat's own, tagged so
// that it never equals a hash of `ipset list`'s text (hashSetListing).
func writeSetDigest(h io.Writer, name string, head []string, sum memberSum, missing bool) {
	if missing {
		fmt.Fprintf(h, "set %s missing\n", name)
		return
	}
	fmt.Fprintf(h, "set %s (netlink, summed)\n", name)
	for _, l := range head {
		fmt.Fprintln(h, l)
	}
	fmt.Fprintf(h, "%d members %016x%016x\n", sum.n, sum.hi, sum.lo)
}

// withElements is a set's header lines (readSetSum) with n members.
func withElements(head []string, n int) []string {
	prefix := fmt.Sprintf("data %d ", ipsetAttrElements)
	out := make([]string, len(head))
	for i, l := range head {
		if strings.HasPrefix(l, prefix) {
			l = fmt.Sprintf("%s%08x", prefix, uint32(n))
		}
		out[i] = l
	}
	slices.Sort(out)
	return out
}

// hashSet hashes a set as the kernel holds it (writeSetDigest), reading
// its whole dump. A missing set is said to be missing.
func hashSet(ctx context.Context, h io.Writer, mh *memberHasher, name string) error {
	head, sum, missing, err := readSetSum(ctx, mh, name, 0)
	if err != nil {
		return err
	}
	writeSetDigest(h, name, head, sum, missing)
	return nil
}

// hashSetLoaded is hashSet of a set whose members are nets (what moat
// loaded into it): the header is read, the members are not. It equals
// hashSet of the set when it holds exactly nets.
func hashSetLoaded(ctx context.Context, h io.Writer, mh *memberHasher, name string, nets []netip.Prefix) error {
	return hashSetLoadedSum(ctx, h, mh, name, mh.sumOf(nets))
}

// hashSetLoadedSum is hashSetLoaded with the networks' sum (sumOf).
func hashSetLoadedSum(ctx context.Context, h io.Writer, mh *memberHasher, name string, sum memberSum) error {
	head, _, missing, err := readSetSum(ctx, mh, name, ipsetFlagListHeader)
	if err != nil {
		return err
	}
	writeSetDigest(h, name, head, sum, missing)
	return nil
}

// readSetSum reads a set's header lines (sorted) and the sum of its
// members (none with ipsetFlagListHeader), or says it is missing.
func readSetSum(ctx context.Context, mh *memberHasher, name string, flags uint32) (head []string, sum memberSum, missing bool, err error) {
	fd, err := dialIpsetFD()
	if err != nil {
		return nil, memberSum{}, false, err
	}
	return readSetSumOn(ctx, fd, mh, name, flags)
}

// readSetSumOn is readSetSum over fd (dumpSetOn), which it closes.
func readSetSumOn(ctx context.Context, fd int, mh *memberHasher, name string, flags uint32) (head []string, sum memberSum, missing bool, err error) {
	missing, err = dumpSetOn(ctx, fd, name, flags, func(attrs []byte) error {
		return sumMessage(mh, attrs, &head, &sum)
	})
	if err != nil || missing {
		return nil, memberSum{}, missing, err
	}
	// The header comes with each part of the dump; a repeat of it says
	// nothing more.
	slices.Sort(head)
	head = slices.Compact(head)
	return head, sum, false, nil
}

// sumMessage adds one message of a set's dump to its header lines and
// its members' sum. A plain member costs no allocation.
func sumMessage(mh *memberHasher, attrs []byte, head *[]string, sum *memberSum) error {
	var perr error
	err := walkAttrs(attrs, func(typ uint16, v []byte) {
		switch typ {
		case ipsetAttrProtocol, ipsetAttrSetname, ipsetAttrLineno:
		case ipsetAttrData:
			perr = errors.Join(perr, walkAttrs(v, func(typ uint16, v []byte) {
				switch typ {
				case ipsetAttrInitval, ipsetAttrHashsize, ipsetAttrReferences, ipsetAttrMemsize:
				default:
					*head = append(*head, fmt.Sprintf("data %d %x", typ, v))
				}
			}))
		case ipsetAttrADT:
			perr = errors.Join(perr, walkAttrs(v, func(typ uint16, v []byte) {
				if typ != ipsetAttrData {
					sum.add(mh.member(ipsetMember{extra: fmt.Sprintf("adt %d %x", typ, v)}))
					return
				}
				if p, ok := plainMember(v); ok {
					sum.add(mh.plain(p.a, p.bits, p.is4))
					return
				}
				mb, err := parseMember(v)
				perr = errors.Join(perr, err)
				sum.add(mh.member(mb))
			}))
		default:
			*head = append(*head, fmt.Sprintf("attr %d %x", typ, v))
		}
	})
	return errors.Join(err, perr)
}

type plainNet struct {
	a    [16]byte
	bits int
	is4  bool
}

// plainMember reads a member that is an address and a prefix length and
// nothing else, without allocating: what parseMember reads with no other
// attribute, where the prefix length is valid for the address (ok false
// otherwise: parseMember reads it).
func plainMember(v []byte) (p plainNet, ok bool) {
	haveIP, haveCIDR := false, false
	bits := -1
	for len(v) > 0 {
		if len(v) < 4 {
			return p, false
		}
		l := int(binary.NativeEndian.Uint16(v[0:2]))
		typ := binary.NativeEndian.Uint16(v[2:4]) & nlaTypeMask
		if l < 4 || l > len(v) {
			return p, false
		}
		val := v[4:l]
		switch {
		case typ == ipsetAttrIP && !haveIP:
			// One attribute inside: the address.
			if len(val) < 4 {
				return p, false
			}
			il := int(binary.NativeEndian.Uint16(val[0:2]))
			it := binary.NativeEndian.Uint16(val[2:4]) & nlaTypeMask
			if (il+3)&^3 != len(val) && il != len(val) {
				return p, false
			}
			switch {
			case it == ipsetAttrIPAddrV4 && il == 8:
				p.a = [16]byte{10: 0xff, 11: 0xff, 12: val[4], 13: val[5], 14: val[6], 15: val[7]}
				p.is4 = true
			case it == ipsetAttrIPAddrV6 && il == 20:
				copy(p.a[:], val[4:20])
			default:
				return p, false
			}
			haveIP = true
		case typ == ipsetAttrCIDR && len(val) == 1 && !haveCIDR:
			bits, haveCIDR = int(val[0]), true
		default:
			return p, false
		}
		al := (l + 3) &^ 3
		if al > len(v) {
			al = len(v)
		}
		v = v[al:]
	}
	if !haveIP {
		return p, false
	}
	max := 128
	if p.is4 {
		max = 32
	}
	if bits < 0 {
		bits = max
	}
	if bits > max {
		return p, false
	}
	p.bits = bits
	return p, true
}

// dumpSet asks the kernel for one set (IPSET_CMD_LIST; flags such as
// ipsetFlagListHeader) and hands each netfilter message's attributes to
// fn as it arrives, over a socket of its own, into one buffer: nothing of
// a part is kept once fn returns. missing: there is no such set.
func dumpSet(ctx context.Context, name string, flags uint32, fn func(attrs []byte) error) (missing bool, err error) {
	fd, err := dialIpsetFD()
	if err != nil {
		return false, err
	}
	return dumpSetOn(ctx, fd, name, flags, fn)
}

// dumpSetOn is dumpSet over fd, a socket dialIpsetFD opened (in the
// network namespace whose set is read: the calling thread's when it was
// opened, whichever thread reads it); it closes fd.
func dumpSetOn(ctx context.Context, fd int, name string, flags uint32, fn func(attrs []byte) error) (missing bool, err error) {
	defer closeFDLater(fd) // read only
	const seq = 1
	req := dumpRequest(name, flags, seq)
	if err := sendFD(fd, req); err != nil {
		return false, fmt.Errorf("%w: list %q: %w", errIpsetNetlink, name, err)
	}
	// 64 KiB: the kernel makes each part of a dump up to 32 KiB.
	buf := make([]byte, 1<<16)
	deadline := time.Now().Add(ipsetAnswerTimeout)
	for {
		n, err := recvWithin(ctx, fd, buf, unix.MSG_TRUNC, deadline)
		if err != nil {
			return false, fmt.Errorf("%w: list %q: %w", errIpsetNetlink, name, err)
		}
		if n > len(buf) {
			return false, fmt.Errorf("%w: list %q: a part of %d bytes", errIpsetNetlink, name, n)
		}
		done, missing, err := dumpPart(buf[:n], seq, fn)
		if err != nil {
			return false, fmt.Errorf("%w: list %q: %w", errIpsetNetlink, name, err)
		}
		if done {
			return missing, nil
		}
	}
}

// dumpPart reads one part of a dump's answer (one recvmsg: netlink
// messages one after the other), handing each netfilter message of
// request seq to fn. done: the dump ended (NLMSG_DONE, or an error,
// missing for ENOENT: no such set).
func dumpPart(b []byte, seq uint32, fn func(attrs []byte) error) (done, missing bool, err error) {
	for len(b) > 0 {
		if len(b) < unix.SizeofNlMsghdr {
			return false, false, errors.New("message cut short")
		}
		l := int(binary.NativeEndian.Uint32(b[0:4]))
		typ := binary.NativeEndian.Uint16(b[4:6])
		flags := binary.NativeEndian.Uint16(b[6:8])
		mseq := binary.NativeEndian.Uint32(b[8:12])
		if l < unix.SizeofNlMsghdr || l > len(b) {
			return false, false, fmt.Errorf("message of length %d in %d bytes", l, len(b))
		}
		msg := b[unix.SizeofNlMsghdr:l]
		if al := (l + 3) &^ 3; al < len(b) {
			b = b[al:]
		} else {
			b = nil
		}
		if mseq != seq {
			continue // not an answer to this request
		}
		if flags&unix.NLM_F_DUMP_INTR != 0 {
			// The set changed under the dump (no ipset kernel says so
			// today): what was read may be neither before nor after.
			return false, false, errors.New("the dump was interrupted")
		}
		switch typ {
		case unix.NLMSG_DONE:
			return true, false, nil
		case unix.NLMSG_ERROR:
			if len(msg) < 4 {
				return false, false, errors.New("error cut short")
			}
			errno := -int32(binary.NativeEndian.Uint32(msg[0:4]))
			switch {
			case errno == 0:
				continue // an acknowledgement
			case unix.Errno(errno) == unix.ENOENT:
				return true, true, nil
			}
			return false, false, unix.Errno(errno)
		case unix.NLMSG_NOOP:
			continue
		}
		if len(msg) < 4 {
			continue // no nfgenmsg: nothing of the set
		}
		if err := fn(msg[4:]); err != nil {
			return false, false, err
		}
	}
	return false, false, nil
}

// dumpRequest is the netlink message asking for set name's dump.
func dumpRequest(name string, flags uint32, seq uint32) []byte {
	b := make([]byte, unix.SizeofNlMsghdr, 64+len(name))
	b = append(b, unix.AF_INET, unix.NFNETLINK_V0, 0, 0)
	b = nft.AppendAttr(b, ipsetAttrProtocol, []byte{ipsetProtocol})
	if name != "" {
		b = nft.AppendAttr(b, ipsetAttrSetname, append([]byte(name), 0))
	}
	if flags != 0 {
		b = nft.AppendAttr(b, ipsetAttrFlags|unix.NLA_F_NET_BYTEORDER, binary.BigEndian.AppendUint32(nil, flags))
	}
	binary.NativeEndian.PutUint32(b[0:4], uint32(len(b)))
	binary.NativeEndian.PutUint16(b[4:6], nfnlSubsysIPSet<<8|ipsetCmdList)
	binary.NativeEndian.PutUint16(b[6:8], unix.NLM_F_REQUEST|unix.NLM_F_DUMP)
	binary.NativeEndian.PutUint32(b[8:12], seq)
	return b
}
