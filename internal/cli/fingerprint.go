package cli

import (
	"context"
	"encoding/json"
	"errors"
	"time"

	"github.com/moat-fw/moat/internal/backend"
	"github.com/moat-fw/moat/internal/drift"
	"github.com/moat-fw/moat/internal/engine"
	"github.com/moat-fw/moat/internal/statedir"
)

// fingerprintFile records the fingerprint of moat's rules in the kernel
// taken right after moat applied them (or after a full comparison found
// them to be what moat applied), for the applied record it belongs to.
const fingerprintFile = "kernel-fingerprint.json"

type kernelRecord struct {
	Backend      string    `json:"backend"`
	PolicySHA256 string    `json:"policy_sha256"`
	Time         time.Time `json:"time"`
	Fingerprint  string    `json:"fingerprint"`
}

// kernelFingerprint hashes moat's table (nftables, over netlink: chains,
// rule bodies, policy set elements) or chains (iptables: the backend's
// fingerprint of its chains, jumps and sets), without counters, bans or
// rate-limit state.
func (a *app) kernelFingerprint(ctx context.Context, b backend.Backend) (string, error) {
	if b.Name() == "nftables" {
		l, err := drift.Read(ctx, "nftables", nil, nil)
		if err != nil {
			return "", err
		}
		if l.Empty() {
			return "", nil
		}
		return drift.Fingerprint(l)
	}
	f, ok := b.(backend.Fingerprinter)
	if !ok {
		return "", errNoFingerprint
	}
	return f.Fingerprint(ctx)
}

var errNoFingerprint = errors.New("the backend cannot fingerprint its rules")

// unchangedSinceApply says whether the kernel holds exactly what moat left
// there for the applied record st: its fingerprint is the recorded one.
// False when that cannot be told (no record, another applied record, an
// unreadable kernel): the caller then compares in full.
func (a *app) unchangedSinceApply(ctx context.Context, b backend.Backend, st appliedState) bool {
	data, err := statedir.ReadFile(a.stateDir, fingerprintFile)
	if err != nil {
		return false
	}
	var rec kernelRecord
	if json.Unmarshal(data, &rec) != nil || rec.Fingerprint == "" || !rec.matches(st) || rec.Backend != b.Name() {
		return false
	}
	fp, err := a.kernelFingerprint(ctx, b)
	return err == nil && fp == rec.Fingerprint
}

func (r kernelRecord) matches(st appliedState) bool {
	return st.Known && r.Backend == st.Backend && r.Time.Equal(st.Time) && r.PolicySHA256 == engine.Hash([]byte(st.Policy))
}

// recordFingerprint stores the kernel's fingerprint for the applied record
// st. Call it only when the kernel is known to hold what moat applied.
func (a *app) recordFingerprint(ctx context.Context, b backend.Backend, st appliedState) {
	if !st.Known || b.Name() != st.Backend {
		return
	}
	fp, err := a.kernelFingerprint(ctx, b)
	if err != nil || fp == "" {
		a.log.Debug("fingerprint moat's rules", "err", err)
		_ = statedir.Remove(a.stateDir, fingerprintFile)
		return
	}
	data, err := json.Marshal(kernelRecord{Backend: st.Backend, PolicySHA256: engine.Hash([]byte(st.Policy)), Time: st.Time, Fingerprint: fp})
	if err == nil {
		err = statedir.WriteFile(a.stateDir, fingerprintFile, data)
	}
	if err != nil {
		a.log.Debug("record the fingerprint of moat's rules", "err", err)
	}
}
