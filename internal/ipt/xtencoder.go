package ipt

import (
	"errors"
	"fmt"

	"github.com/moat-fw/moat/internal/nft"
	"github.com/moat-fw/moat/internal/xtenc"
)

// xtencEncoder encodes rule lines with package xtenc, the ipsets'
// indexes asked of the kernel of the calling thread.
type xtencEncoder struct {
	sets xtenc.SetIndex
	done func() error
}

func init() { newXtEncoder = openXtenc }

func openXtenc() (xtEncoder, error) {
	sets, done, err := xtenc.KernelSetIndex()
	if err != nil {
		return nil, err
	}
	return &xtencEncoder{sets: sets, done: done}, nil
}

func (e *xtencEncoder) encode(proto uint8, line string) ([]xtRule, error) {
	rules, err := xtenc.EncodeAll(proto, line, e.sets)
	if err != nil {
		if errors.Is(err, xtenc.ErrUnsupported) {
			return nil, fmt.Errorf("%w: %w", errXtUnsupported, err)
		}
		return nil, err
	}
	out := make([]xtRule, 0, len(rules))
	for _, r := range rules {
		out = append(out, xtRule{exprs: r.Exprs, udata: r.UserData, compat: r.Compat})
	}
	return out, nil
}

// close releases the lookups' socket off the caller's path: it is
// closed right after the transaction the rules went in, and the release
// of a netfilter socket then waits for the kernel to free what the commit
// replaced (nft.CloseLater).
func (e *xtencEncoder) close() error {
	nft.CloseLater(e.done)
	return nil
}
