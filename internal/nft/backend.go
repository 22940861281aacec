package nft

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os/exec"
	"sync"

	"sigs.k8s.io/knftables"

	"github.com/moat-fw/moat/internal/ruleset"
)

// Backend programs moat's nftables table.
type Backend struct {
	once sync.Once
	nft  knftables.Interface
	err  error
}

// New returns the nftables backend; nothing runs until it is used.
func New() *Backend { return &Backend{} }

// Name is the backend's name.
func (b *Backend) Name() string { return "nftables" }

func (b *Backend) iface() (knftables.Interface, error) {
	b.once.Do(func() {
		b.nft, b.err = knftables.New(knftables.InetFamily, TableName)
		if b.err != nil {
			b.err = fmt.Errorf("nftables: %w", b.err)
		}
	})
	return b.nft, b.err
}

// Available reports whether nft can be used here (binary, permission, kernel).
func (b *Backend) Available() error {
	_, err := b.iface()
	return err
}

// Script is the nft script that loads rs into an empty table, as `moat
// show` prints it. It needs neither root nor nft.
func (b *Backend) Script(rs *ruleset.Ruleset) (string, error) {
	fake := knftables.NewFake(knftables.InetFamily, TableName)
	tx := fake.NewTransaction()
	Build(tx, rs, nil)
	return tx.String(), nil
}

func (b *Backend) existing(ctx context.Context, nft knftables.Interface) (Existing, error) {
	ex := Existing{}
	for _, typ := range []string{"chain", "set"} {
		names, err := nft.List(ctx, typ)
		if knftables.IsNotFound(err) {
			return Existing{}, nil
		}
		if err != nil {
			return nil, fmt.Errorf("list %ss of table inet %s: %w", typ, TableName, err)
		}
		ex[typ] = names
	}
	return ex, nil
}

func (b *Backend) transaction(ctx context.Context, rs *ruleset.Ruleset) (knftables.Interface, *knftables.Transaction, error) {
	nft, err := b.iface()
	if err != nil {
		return nil, nil, err
	}
	ex, err := b.existing(ctx, nft)
	if err != nil {
		return nil, nil, err
	}
	tx := nft.NewTransaction()
	Build(tx, rs, ex)
	return nft, tx, nil
}

// Check asks the kernel whether rs would load (nft --check), changing nothing.
func (b *Backend) Check(ctx context.Context, rs *ruleset.Ruleset) error {
	nft, tx, err := b.transaction(ctx, rs)
	if err != nil {
		return err
	}
	if err := nft.Check(ctx, tx); err != nil {
		return fmt.Errorf("nftables check: %w", err)
	}
	return nil
}

// Apply replaces the contents of moat's table with rs in one transaction:
// either all of it takes effect or none does.
func (b *Backend) Apply(ctx context.Context, rs *ruleset.Ruleset) error {
	nft, tx, err := b.transaction(ctx, rs)
	if err != nil {
		return err
	}
	if err := nft.Run(ctx, tx); err != nil {
		return fmt.Errorf("nftables apply: %w", err)
	}
	return nil
}

// Active reports whether moat's table is loaded.
func (b *Backend) Active(ctx context.Context) (bool, error) {
	nft, err := b.iface()
	if err != nil {
		return false, err
	}
	_, err = nft.List(ctx, "chain")
	if knftables.IsNotFound(err) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("nftables: %w", err)
	}
	return true, nil
}

// Remove deletes moat's table and nothing else.
func (b *Backend) Remove(ctx context.Context) error {
	active, err := b.Active(ctx)
	if err != nil || !active {
		return err
	}
	nft, _ := b.iface()
	tx := nft.NewTransaction()
	tx.Delete(&knftables.Table{})
	if err := nft.Run(ctx, tx); err != nil && !knftables.IsNotFound(err) {
		return fmt.Errorf("nftables: remove table inet %s: %w", TableName, err)
	}
	return nil
}

// Counters reads the kernel's counters of moat's rules, summed by origin ID.
func (b *Backend) Counters(ctx context.Context) (map[string]ruleset.Counter, error) {
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, "nft", "-j", "list", "table", "inet", TableName)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("nftables: list table inet %s: %w: %s", TableName, err, bytes.TrimSpace(stderr.Bytes()))
	}
	return parseCounters(stdout.Bytes())
}

// parseCounters reads `nft -j list table` output: each rule's comment tag
// and the packets and bytes of its counter expression.
func parseCounters(data []byte) (map[string]ruleset.Counter, error) {
	var doc struct {
		Nftables []map[string]json.RawMessage `json:"nftables"`
	}
	if err := json.Unmarshal(data, &doc); err != nil {
		return nil, fmt.Errorf("nftables: parse counters: %w", err)
	}
	out := map[string]ruleset.Counter{}
	for _, obj := range doc.Nftables {
		raw, ok := obj["rule"]
		if !ok {
			continue
		}
		var rule struct {
			Comment string                       `json:"comment"`
			Expr    []map[string]json.RawMessage `json:"expr"`
		}
		if err := json.Unmarshal(raw, &rule); err != nil {
			return nil, fmt.Errorf("nftables: parse counters: %w", err)
		}
		id := ruleset.OriginID(rule.Comment)
		if id == "" {
			continue
		}
		for _, e := range rule.Expr {
			c, ok := e["counter"]
			if !ok {
				continue
			}
			var n ruleset.Counter
			if err := json.Unmarshal(c, &n); err != nil {
				return nil, errors.Join(fmt.Errorf("nftables: parse counter of %s", id), err)
			}
			sum := out[id]
			sum.Packets += n.Packets
			sum.Bytes += n.Bytes
			out[id] = sum
		}
	}
	return out, nil
}

// Snapshot returns moat's table as `nft list table` prints it (set
// elements and their timeouts included), or nil when there is none.
func (b *Backend) Snapshot(ctx context.Context) ([]byte, error) {
	active, err := b.Active(ctx)
	if err != nil || !active {
		return nil, err
	}
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, "nft", "list", "table", "inet", TableName)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("nftables: snapshot table inet %s: %w: %s", TableName, err, bytes.TrimSpace(stderr.Bytes()))
	}
	return stdout.Bytes(), nil
}

// Restore makes moat's table exactly a snapshot, in one transaction
// (delete and recreate); an empty snapshot removes the table.
func (b *Backend) Restore(ctx context.Context, snap []byte) error {
	if len(bytes.TrimSpace(snap)) == 0 {
		return b.Remove(ctx)
	}
	if !bytes.HasPrefix(bytes.TrimSpace(snap), []byte("table inet "+TableName+" {")) {
		return fmt.Errorf("nftables: restore: not a snapshot of table inet %s", TableName)
	}
	script := "table inet " + TableName + " {}\ndelete table inet " + TableName + "\n" + string(snap)
	var stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, "nft", "-f", "-")
	cmd.Stdin = bytes.NewReader([]byte(script))
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("nftables: restore table inet %s: %w: %s", TableName, err, bytes.TrimSpace(stderr.Bytes()))
	}
	return nil
}
