package node_test

import (
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	format "github.com/ftckpt/ftckpt/checkpoint"
	"github.com/ftckpt/ftckpt/checkpoint/linktest"
	"github.com/ftckpt/ftckpt/modes/node"
	"github.com/ftckpt/ftckpt/modes/node/nodetest"
	"github.com/ftckpt/ftckpt/modes/replay"
	"github.com/ftckpt/ftckpt/vmm/vmmtest"
)

// TestResyncKeepsWhatTheBackupHolds: a checkpoint pair of the software
// machine's kv guest in sync; an epoch's checkpoint is corrupted on the
// way, the backup rejects it and asks for a full sync, which keeps what
// the backup holds (resyncKeeps): at least one of the four ranges of its 1
// MiB.
func TestResyncKeepsWhatTheBackupHolds(t *testing.T) {
	resyncKeeps(t, node.MachineSim, format.MemHashRangePages)
}

// TestKVMResyncKeepsWhatTheBackupHolds is TestResyncKeepsWhatTheBackupHolds
// with the C kv guest on KVM (two vCPUs): at least half of its 16 MiB are
// kept (most of it the guest never touches).
func TestKVMResyncKeepsWhatTheBackupHolds(t *testing.T) {
	vmmtest.RequireKVM(t)
	resyncKeeps(t, node.MachineKVM, 2048)
}

// keptPages is what a pre-copy round's log record says the backup had.
var keptPages = regexp.MustCompile(`pre-copy round shipped round=1 pages=(\d+) pages the backup had=(\d+)`)

// resyncKeeps runs a checkpoint pair of the kv guest on machine, with
// --verify, over plain TCP whose primary-to-backup path flips a byte of
// the 20th epoch's checkpoint: the backup's checksum rejects it and it asks
// for a full sync. That sync asks the backup for its memory's hashes and
// sends what the guest has not written since the last epoch the backup
// committed as KEPT: at least least pages; it commits (--verify's memory hash agrees, which a page kept
// wrongly would fail), the client's counters go on, and the backup goes
// live after a crash with every update on the disk.
func resyncKeeps(t *testing.T, machine node.Machine, least int) {
	o := kvOptions(t, node.ModeCheckpoint, machine)
	o.Checkpoint.Verify = true
	link := linktest.New()
	corrupted := false
	link.SetFilter(linktest.Up, linktest.Frames(func(typ uint16, body []byte) bool {
		if h, ok := format.PeekHeader(body); ok && !corrupted && format.MsgType(typ) == format.MsgCheckpoint &&
			h.Kind == format.KindEpoch && h.Epoch >= 20 {
			body[len(body)/2] ^= 0x40
			corrupted = true
		}
		return true
	}))
	p := nodetest.StartOn(t, o, link)
	c := nodetest.NewKVClient(t, p.Addr(), o.Mode)
	// A reply takes two acknowledged epochs (the journal's FLUSH waits for
	// the first), and with --verify in the emulated KVM machine an epoch's
	// ack takes seconds (the backup hashes all of memory): a resend every
	// second would queue INCRs faster than the guest answers them.
	c.Resend = 30 * time.Second
	p.WaitInSync()
	var resync []string
	vmmtest.WaitUntil(t, "a full sync after the rejected checkpoint", func() bool {
		c.Incr() // the guest writes its table, its journal and its rings
		resync = keptPages.FindStringSubmatch(p.Log.String())
		return resync != nil
	})
	pages, _ := strconv.Atoi(resync[1])
	kept, _ := strconv.Atoi(resync[2])
	if !p.Log.Has("backup", "checkpoint rejected; asking for a full sync") {
		t.Fatal("the backup rejected nothing")
	}
	if kept < least || kept > pages {
		t.Fatalf("the resync kept %d of %d pages: want at least %d", kept, pages, least)
	}
	t.Logf("the resync kept %d of %d pages", kept, pages)
	vmmtest.WaitUntil(t, "the resync's commit acknowledged", func() bool {
		return strings.Count(p.Log.String(), "full sync acknowledged") == 2 && p.InSync()
	})
	for range 2 {
		c.Incr()
	}
	for _, l := range strings.Split(p.Log.String(), "\n") {
		if strings.Contains(l, "primary") && strings.Contains(l, "sync") {
			t.Log(l) // the syncs as the primary saw them
		}
	}
	crashAndFailOver(t, p, c)
}

// TestReplayResyncsWhileTheGuestRuns: a replay pair of the kv guest over
// plain TCP whose primary-to-backup path changes one value the guest read
// in a batch of the log (re-encoded, so that only the backup's replay can
// tell): the backup diverges and asks for a full checkpoint, which comes by
// pre-copy while the guest runs, keeping the pages the backup holds (its
// hashes); the pair is in sync again, the client's counters go on, and the
// backup goes live after a crash with every update on the disk.
func TestReplayResyncsWhileTheGuestRuns(t *testing.T) {
	replayResync(t, node.MachineSim)
}

// TestKVMReplayResyncsWhileTheGuestRuns is TestReplayResyncsWhileTheGuestRuns
// on KVM.
func TestKVMReplayResyncsWhileTheGuestRuns(t *testing.T) {
	vmmtest.RequireKVM(t)
	replayResync(t, node.MachineKVM)
}

func replayResync(t *testing.T, machine node.Machine) {
	o := kvOptions(t, node.ModeReplay, machine)
	link := linktest.New()
	edited := false
	link.SetFilter(linktest.Up, linktest.Frames(func(typ uint16, body []byte) bool {
		var b replay.Batch
		if edited || format.MsgType(typ) != format.MsgLog || replay.DecodeBatch(body, &b) != nil || b.First < 200 {
			return true
		}
		for i := range b.Entries {
			if e := &b.Entries[i]; e.Type == replay.EntryValue {
				e.Exit.Data[0] ^= 1
				if out := b.Encode(); len(out) == len(body) {
					copy(body, out)
					edited = true
				}
				break
			}
		}
		return true
	}))
	p := nodetest.StartOn(t, o, link)
	c := nodetest.NewKVClient(t, p.Addr(), o.Mode)
	p.WaitInSync()
	primary, backup := p.Primary.Parts().ReplayPrimary, p.Backup.Parts().ReplayBackup
	vmmtest.WaitUntil(t, "the pair in sync again after a divergence", func() bool {
		c.Incr()
		return backup.Stats.Divergences.Load() > 0 && backup.Stats.Applied.Load() >= 2 && primary.InSync()
	})
	if !p.Log.Has("primary", "full checkpoint sent by pre-copy") {
		t.Fatal("the resync did not go by pre-copy")
	}
	if primary.Stats.KeptPages.Load() == 0 {
		t.Error("the resync sent every page: it kept none of those the backup held")
	}
	for _, l := range strings.Split(p.Log.String(), "\n") {
		if strings.Contains(l, "diverged") || strings.Contains(l, "full checkpoint") {
			t.Log(l)
		}
	}
	for range 2 {
		c.Incr()
	}
	crashAndFailOver(t, p, c)
}
