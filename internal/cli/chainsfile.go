package cli

import (
	"encoding/binary"
	"errors"

	"github.com/moat-fw/moat/internal/drift"
	"github.com/moat-fw/moat/internal/statedir"
)

// chainsFile keeps moat's nftables chains as the fingerprint of
// kernel-fingerprint.json read them (kernelChains): the fingerprint after
// an edit reads back only the chains the edit's netlink patch wrote and
// takes the others from here (chainsKnown). A cache like the record: not
// synced, checked on reading; a file that does not decode, or that
// belongs to another fingerprint, is not used, and every chain is read.
const chainsFile = "kernel-chains"

// chainsMagic starts the file; the format is length-prefixed strings
// (uvarint length, bytes): binary-safe, and decoded in a fraction of
// what JSON took (the record's 18 KB of JSON cost 0.15 ms to read).
var chainsMagic = []byte("MOATCHN1")

// maxRecordedChains bounds the chains kept: about 8 KB for the
// benchmarks' two-line policy; a policy of thousands of rules is read
// back whole, as before.
const maxRecordedChains = 256 << 10

// kernelChains is moat's chains at the fingerprint fp: fp is the
// fingerprint of a layout holding exactly these chains (the two were
// taken from one read), so a record whose fingerprint is fp had these
// chains when it was taken.
type kernelChains struct {
	fp     string
	chains map[string]drift.Chain
}

func encodeChains(k kernelChains) []byte {
	// Sized at once: grown by append it allocated 60 KB for 8.
	size := len(chainsMagic) + len(k.fp) + 2*binary.MaxVarintLen64
	for name, c := range k.chains {
		size += len(name) + len(c.Head) + 3*binary.MaxVarintLen64
		for _, r := range c.Rules {
			size += len(r.Tag) + len(r.Verdict) + len(r.Body) + 3*binary.MaxVarintLen64
		}
	}
	b := append(make([]byte, 0, size), chainsMagic...)
	str := func(s string) {
		b = binary.AppendUvarint(b, uint64(len(s)))
		b = append(b, s...)
	}
	str(k.fp)
	b = binary.AppendUvarint(b, uint64(len(k.chains)))
	for name, c := range k.chains {
		str(name)
		str(c.Head)
		b = binary.AppendUvarint(b, uint64(len(c.Rules)))
		for _, r := range c.Rules {
			str(r.Tag)
			str(r.Verdict)
			str(r.Body)
		}
	}
	return b
}

var errChainsFile = errors.New("kernel-chains: damaged")

func decodeChains(data []byte) (kernelChains, error) {
	if len(data) < len(chainsMagic) || string(data[:len(chainsMagic)]) != string(chainsMagic) {
		return kernelChains{}, errChainsFile
	}
	data = data[len(chainsMagic):]
	bad := false
	num := func() uint64 {
		n, w := binary.Uvarint(data)
		if w <= 0 || n > uint64(len(data)) {
			bad = true
			return 0
		}
		data = data[w:]
		return n
	}
	str := func() string {
		n := num()
		if bad || n > uint64(len(data)) {
			bad = true
			return ""
		}
		s := string(data[:n])
		data = data[n:]
		return s
	}
	k := kernelChains{fp: str()}
	n := num()
	k.chains = make(map[string]drift.Chain, min(n, 1024))
	for i := uint64(0); i < n && !bad; i++ {
		name, head := str(), str()
		m := num()
		c := drift.Chain{Head: head, Rules: make([]drift.Rule, 0, min(m, 1024))}
		for j := uint64(0); j < m && !bad; j++ {
			c.Rules = append(c.Rules, drift.Rule{Tag: str(), Verdict: str(), Body: str()})
		}
		if _, dup := k.chains[name]; dup {
			bad = true
		}
		k.chains[name] = c
	}
	if bad || len(data) != 0 || k.fp == "" {
		return kernelChains{}, errChainsFile
	}
	return k, nil
}

// recordableChains is l's chains to keep, or nil when they are over
// maxRecordedChains.
func recordableChains(l *drift.Layout) map[string]drift.Chain {
	if l == nil || len(l.Chains) == 0 {
		return nil
	}
	out := make(map[string]drift.Chain, len(l.Chains))
	size := 0
	for name, c := range l.Chains {
		size += len(name) + len(c.Head)
		for _, r := range c.Rules {
			size += len(r.Tag) + len(r.Verdict) + len(r.Body)
		}
		if size > maxRecordedChains {
			return nil
		}
		out[name] = drift.Chain{Head: c.Head, Rules: c.Rules}
	}
	return out
}

// writeChains keeps chains as the chains of the fingerprint fp (nil:
// the file is removed, so the next fingerprint reads every chain).
func (a *app) writeChains(fp string, chains map[string]drift.Chain) {
	var err error
	if chains == nil {
		err = statedir.Remove(a.stateDir, chainsFile)
	} else {
		err = statedir.WriteCache(a.stateDir, chainsFile, encodeChains(kernelChains{fp: fp, chains: chains}))
	}
	if err != nil {
		a.log.Debug("keep moat's chains", "err", err)
	}
}

// readChains is the chains kept for the fingerprint fp, or nil.
func (a *app) readChains(fp string) map[string]drift.Chain {
	data, err := statedir.ReadFile(a.stateDir, chainsFile)
	if err != nil {
		return nil
	}
	k, err := decodeChains(data)
	if err != nil || k.fp != fp {
		return nil
	}
	return k.chains
}
