package replay

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/ftckpt/ftckpt/outbuf"
	"github.com/ftckpt/ftckpt/vmm/sim"
	"github.com/ftckpt/ftckpt/witness"
)

type discardNet struct{}

func (discardNet) SendFrame([]byte) error { return nil }

// TestGoingAloneDropsTheOpenBatch: entries logged for a backup that was
// lost before they were shipped go nowhere. A backup attaching later gets
// a stream that starts at the sync in the generation the primary won
// meanwhile: the old generation's open batch ahead of it made that backup
// believe its primary had been replaced, take over from the running
// primary, and halt it (TestPrimaryLosesItsBackupThenTakesANewOne, about
// once in 60 runs under -race).
func TestGoingAloneDropsTheOpenBatch(t *testing.T) {
	ctx := context.Background()
	arb, err := witness.Open("disk:" + filepath.Join(t.TempDir(), "lease"))
	if err != nil {
		t.Fatal(err)
	}
	defer arb.Close()
	fence := witness.NewFence(arb, "primary")
	if _, err := fence.Acquire(ctx, 1); err != nil {
		t.Fatal(err)
	}
	disk, err := os.Create(filepath.Join(t.TempDir(), "disk"))
	if err != nil {
		t.Fatal(err)
	}
	defer disk.Close()
	out, err := outbuf.New(outbuf.DefaultConfig(), outbuf.Env{Generation: 1, Fence: fence, Net: discardNet{}, Disk: disk, Clock: outbuf.SystemClock{}})
	if err != nil {
		t.Fatal(err)
	}
	plug := &Plug{}
	m, err := sim.New("kv", 64, plug)
	if err != nil {
		t.Fatal(err)
	}
	p, err := NewPrimary(DefaultConfig(), m, plug, out, fence, 1, nil)
	if err != nil {
		t.Fatal(err)
	}
	p.ctx = ctx

	p.recording = true // protected by a backup, in generation 1
	p.append(Entry{Type: EntryTime, Time: 1})
	p.append(Entry{Type: EntryTime, Time: 2})
	// The backup is lost before the batch is shipped; the primary wins
	// generation 2 and goes on alone.
	if err := witness.PrimaryLostBackup(ctx, fence); err != nil {
		t.Fatal(err)
	}
	p.gen.Store(2)
	if err := p.goAlone(); err != nil {
		t.Fatal(err)
	}
	// A new backup attaches: its stream starts at the sync.
	p.recording = true
	p.append(Entry{Type: EntrySync})
	var b Batch
	if err := DecodeBatch(p.w.Finish(), &b); err != nil {
		t.Fatal(err)
	}
	if b.Generation != 2 || b.First != 3 || len(b.Entries) != 1 || b.Entries[0].Type != EntrySync {
		t.Fatalf("the new backup's first batch is generation %d from LSN %d with %d entries; want generation 2 from LSN 3, the sync alone",
			b.Generation, b.First, len(b.Entries))
	}
}
