package replay_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	format "github.com/ftckpt/ftckpt/checkpoint"
	"github.com/ftckpt/ftckpt/checkpoint/linktest"
	"github.com/ftckpt/ftckpt/modes/replay"
	"github.com/ftckpt/ftckpt/vmm"
	"github.com/ftckpt/ftckpt/vmm/machine"
	"github.com/ftckpt/ftckpt/vmm/sim"
	"github.com/ftckpt/ftckpt/vmm/vmmtest"
)

// cachedDisk is a host's page cache over the shared disk file: writes
// stay in memory until Sync; a crash of the host loses them.
type cachedDisk struct {
	mu      sync.Mutex
	f       *os.File
	pending []write
	dead    bool
}

type write struct {
	off  int64
	data []byte
}

func (d *cachedDisk) ReadAt(p []byte, off int64) (int, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	n, err := d.f.ReadAt(p, off)
	for _, w := range d.pending {
		overlay(p, off, w)
	}
	return n, err
}

// errHostDead is what a crashed host's disk says: the primary may run on
// a moment in the test (it is stopped just after), but must not believe
// anything it writes from then on durable.
var errHostDead = errors.New("the host crashed")

func (d *cachedDisk) WriteAt(p []byte, off int64) (int, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.dead {
		return 0, errHostDead
	}
	d.pending = append(d.pending, write{off, bytes.Clone(p)})
	return len(p), nil
}

// Sync makes the cached writes durable (fdatasync).
func (d *cachedDisk) Sync() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.dead {
		return errHostDead
	}
	for _, w := range d.pending {
		if _, err := d.f.WriteAt(w.data, w.off); err != nil {
			return err
		}
	}
	d.pending = nil
	return nil
}

// crash loses what is not durable, and everything after.
func (d *cachedDisk) crash() {
	d.mu.Lock()
	d.pending, d.dead = nil, true
	d.mu.Unlock()
}

// overlay copies the part of w that falls in [off, off+len(p)) into p.
func overlay(p []byte, off int64, w write) {
	lo, hi := max(off, w.off), min(off+int64(len(p)), w.off+int64(len(w.data)))
	if lo < hi {
		copy(p[lo-off:hi-off], w.data[lo-w.off:hi-w.off])
	}
}

// writeLog records the disk writes a machine made.
type writeLog struct {
	machine.Env

	mu     sync.Mutex
	writes []write
}

// mirror gives c's primary disk the contents initial (1 MiB) and returns a
// fresh image of that size for the backup's own (mirrored) disk.
func (c *cluster) mirror(initial []byte) *vmm.FileDisk {
	c.t.Helper()
	if _, err := c.disk.WriteAt(initial, 0); err != nil {
		c.t.Fatal(err)
	}
	img, err := vmm.CreateFileDisk(filepath.Join(c.t.TempDir(), "backup.img"), 1<<20)
	if err != nil {
		c.t.Fatal(err)
	}
	c.t.Cleanup(func() { img.Close() })
	return img
}

// logBackupWrites has c's backup machine record its disk writes.
func logBackupWrites(c *cluster) *writeLog {
	l := &writeLog{}
	c.envWrap = func(host string, env machine.Env) machine.Env {
		if host != "backup" {
			return env
		}
		l.Env = env
		return l
	}
	return l
}

// check fails the test unless disk holds base with every write logged
// over it, in order.
func (l *writeLog) check(t *testing.T, disk io.ReaderAt, base []byte, what string) {
	t.Helper()
	want := bytes.Clone(base)
	l.mu.Lock()
	for _, w := range l.writes {
		overlay(want, 0, w)
	}
	n := len(l.writes)
	l.mu.Unlock()
	got := make([]byte, len(want))
	if _, err := disk.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	if n == 0 {
		t.Fatal("the guest wrote nothing: the test does not test")
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("after failover %s differs from the %d writes of the guest's history", what, n)
	}
}

func (l *writeLog) WriteDisk(p []byte, off int64) error {
	l.mu.Lock()
	l.writes = append(l.writes, write{off, bytes.Clone(p)})
	l.mu.Unlock()
	return l.Env.WriteDisk(p, off)
}

// TestDiskWritesSurviveTheHostsCrash crashes the primary's whole host
// (its page cache lost) at 10 random moments while the kv guest journals
// every update to a sector of its own: after failover the shared disk
// holds exactly what the backup's guest wrote, every write of its history
// applied.
func TestDiskWritesSurviveTheHostsCrash(t *testing.T) {
	seed := time.Now().UnixNano()
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewSource(seed))
	for i := 0; i < 10; i++ {
		t.Run(strconv.Itoa(i), func(t *testing.T) {
			c := newCluster(t, "kv", sim.Param{Name: "journal", Value: 1000})
			cache := &cachedDisk{f: c.disk}
			c.pDisk, c.pSync = cache, cache.Sync
			backupWrites := logBackupWrites(c)
			c.start()
			c.incr(t, 5+rng.Intn(40))
			c.send()
			time.Sleep(time.Duration(rng.Intn(3000)) * time.Microsecond) // the random moment: the test's point
			cache.crash()
			c.crashPrimary()
			c.failover()
			// What the disk must hold: the backup's guest's whole write
			// history (replayed, then re-issued or live), applied in order.
			backupWrites.check(t, c.disk, make([]byte, 1<<20), "the shared disk")
		})
	}
}

// TestGuestFlushMeansDurable: the kv guest journals every update and
// flushes the disk before replying. Whenever a reply reaches the client,
// the update it reports must already be on the shared disk itself, not
// in the primary's page cache (nor held for the backup).
func TestGuestFlushMeansDurable(t *testing.T) {
	c := newCluster(t, "kv", sim.Param{Name: "journal", Value: 1000}, sim.Param{Name: "flush", Value: 1})
	cache := &cachedDisk{f: c.disk}
	c.pDisk, c.pSync = cache, cache.Sync
	var bad error
	c.client.onFrame = func(host string, f []byte) {
		r, err := sim.ParseKVReply(f)
		if err != nil || bad != nil {
			return
		}
		// Every request is an INCR, so the reply's number is the update's.
		sector := make([]byte, sim.DiskSectorSize)
		if _, err := c.disk.ReadAt(sector, int64(16+r.Seq%1000)*sim.DiskSectorSize); err != nil {
			bad = err
			return
		}
		if got := binary.LittleEndian.Uint64(sector[16:]); got != r.Seq {
			bad = fmt.Errorf("reply %d reached the client while the disk's journal says update %d", r.Seq, got)
		}
	}
	c.start()
	c.incr(t, 40)
	c.client.mu.Lock()
	defer c.client.mu.Unlock()
	if bad != nil {
		t.Fatal(bad)
	}
}

// TestHeldDiskWritesSurviveAResync: the guest's disk writes survive a
// resync and the primary's host dying after it, its page cache lost: the
// journal on the shared disk ends with every update the live guest counts.
//   - After a gap (a batch corrupted on the way) the backup's acks stop, so
//     the primary holds its guest's disk writes from there on; the resync's
//     full checkpoint (stop-and-copy) brings the backup a guest that has
//     seen them complete, and the host dies before the ack that would
//     release them reaches it. The backup must write them when it goes
//     live.
//   - After a divergence the resync goes by pre-copy, the primary alone
//     meanwhile: the writes it releases then must be durable before the
//     sync's commit leaves, since the backup goes live from a guest that
//     has seen them. Its acks are lost from the divergence on, so that
//     nothing else has the primary make them durable.
func TestHeldDiskWritesSurviveAResync(t *testing.T) {
	var armed, spoiled atomic.Bool
	for _, tc := range []struct {
		name     string
		up, down filter // spoil one batch once armed; the backup→primary path
	}{
		{"gap", linktest.Frames(func(typ uint16, payload []byte) bool {
			if format.MsgType(typ) == format.MsgLog && armed.Load() && !spoiled.Swap(true) {
				payload[len(payload)/2] ^= 0x10
			}
			return true
		}), lateResyncThenNothing},
		{"divergence", flipValue(&spoiled, func(*replay.Batch) bool { return armed.Load() }), linktest.Frames(func(typ uint16, _ []byte) bool {
			return !spoiled.Load() || format.MsgType(typ) != format.MsgAck
		})},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newCluster(t, "kv", sim.Param{Name: "journal", Value: 1000})
			cache := &cachedDisk{f: c.disk}
			c.pDisk, c.pSync = cache, cache.Sync
			armed.Store(false)
			spoiled.Store(false)
			c.up, c.down = tc.up, tc.down
			c.start()
			c.incr(t, 30)
			armed.Store(true)
			primary := func() *replay.Primary { return c.primary }
			c.load("the backup to apply the resync's checkpoint", time.Millisecond, primary, func() bool { return c.backup.Stats.Applied.Load() >= 2 })
			cache.crash()
			c.crashPrimary()
			c.failover()
			c.runLive()
			n := len(c.client.seen()) + 5
			c.load("5 replies from the live backup", 5*time.Millisecond, c.target, func() bool { return len(c.client.seen()) >= n })
			if !spoiled.Load() || c.primary.Stats.Resyncs.Load() == 0 {
				t.Fatal("no resync")
			}
			// (Not checkKV: the replies the primary held after a gap were
			// lost with it, as a network may lose them.)
			checkJournal(t, c)
		})
	}
}

// lateResyncThenNothing is a backup→primary path on which the backup's
// resync request arrives 50 ms late (the primary holds writes meanwhile)
// and nothing after it arrives: the primary never learns the resync was
// applied.
func lateResyncThenNothing(from io.Reader, to io.Writer) {
	r := format.NewReader(from, 0)
	for {
		typ, payload, err := r.Next()
		if err != nil {
			return
		}
		if typ == format.MsgResync {
			time.Sleep(50 * time.Millisecond) // late: the window this test opens
			format.WriteMessage(to, typ, payload)
			io.Copy(io.Discard, from)
			return
		}
		if format.WriteMessage(to, typ, payload) != nil {
			return
		}
	}
}

// TestSlowDiskSyncDoesNotStallTheGuest: while the primary's fdatasync
// hangs, its guest runs on and answers (a reply leaves on the backup's
// ack), but the releases it marks for the backup wait for the sync: when
// the host then dies, its page cache lost, the backup still has every
// write the hung sync did not cover, and writes it when it goes live.
func TestSlowDiskSyncDoesNotStallTheGuest(t *testing.T) {
	c := newCluster(t, "kv", sim.Param{Name: "journal", Value: 1000})
	cache := &cachedDisk{f: c.disk}
	var slow atomic.Bool
	var hung atomic.Int32
	gate := make(chan struct{})
	var open sync.Once
	c.pDisk = cache
	c.pSync = func() error {
		if slow.Load() {
			hung.Add(1)
			<-gate
		}
		return cache.Sync()
	}
	c.start()
	// Before the cluster's cleanup, which waits for the primary.
	t.Cleanup(func() { open.Do(func() { close(gate) }) })
	c.incr(t, 3)
	slow.Store(true)
	c.incr(t, 20)
	// The primary's syncer calls SyncDisk on its own goroutine when the
	// engine kicks it: in one run in about fifty it had not yet, after 20
	// updates (a sync begun before slow was set can still be running).
	// More updates until it has.
	for deadline := time.Now().Add(vmmtest.Bound); hung.Load() == 0; c.incr(t, 1) {
		if time.Now().After(deadline) {
			t.Fatalf("no fdatasync was asked for in %v while the guest wrote: the test does not test", vmmtest.Bound)
		}
	}

	cache.crash()
	// The host is dead: the hung sync returns, having made nothing
	// durable, once its link is gone.
	c.afterCrash = func() { open.Do(func() { close(gate) }) }
	c.crashPrimary()
	c.failover()
	c.runLive()
	n := len(c.client.seen()) + 3
	c.load("3 replies from the live backup", 5*time.Millisecond, c.target, func() bool { return len(c.client.seen()) >= n })
	checkJournal(t, c)
}

// checkJournal checks that the shared disk has the journal sector of every
// update up to the last one a reply the client saw reports.
func checkJournal(t *testing.T, c *cluster) {
	t.Helper()
	var last uint64
	for _, f := range c.client.seen() {
		if r, err := sim.ParseKVReply(f.data); err == nil {
			last = max(last, r.Seq)
		}
	}
	sector := make([]byte, sim.DiskSectorSize)
	for seq := uint64(1); seq <= last; seq++ {
		if _, err := c.disk.ReadAt(sector, int64(16+seq%1000)*sim.DiskSectorSize); err != nil {
			t.Fatal(err)
		}
		if got := binary.LittleEndian.Uint64(sector[16:]); got != seq {
			t.Errorf("the journal sector of update %d holds update %d (the live guest is at update %d)", seq, got, last)
		}
	}
}

// TestRunEndsWithItsGuest: a primary with a disk to sync (so a syncer runs
// beside its engine) returns from Run when its guest powers off, not only
// when its context ends.
func TestRunEndsWithItsGuest(t *testing.T) {
	c := newCluster(t, "tick", append(slices.Clone(tickParams), sim.Param{Name: "ticks", Value: 30})...)
	c.pSync = func() error { return nil }
	c.start()
	vmmtest.Closed(t, "the primary's Run to return after its guest powered off", c.pDone)
	if c.pErr != nil {
		t.Fatalf("the primary's Run: %v", c.pErr)
	}
}

// TestMirroredDiskHoldsTheGuestsHistory gives the backup a disk image of
// its own (--disk-mode mirrored) and kills the primary at 5 random moments
// while the kv guest journals every update: after failover the backup's
// image holds the primary's disk as it was when the pair started (copied
// by the full checkpoint, with data the guest never writes) with the
// backup's guest's whole write history over it, and no write the guest
// did not issue.
func TestMirroredDiskHoldsTheGuestsHistory(t *testing.T) {
	seed := time.Now().UnixNano()
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewSource(seed))
	for i := 0; i < 5; i++ {
		t.Run(strconv.Itoa(i), func(t *testing.T) {
			c := newCluster(t, "kv", sim.Param{Name: "journal", Value: 1000})
			// The last 100 KiB: data the kv guest never touches.
			initial := make([]byte, 1<<20)
			for j := len(initial) - 100<<10; j < len(initial); j++ {
				initial[j] = byte(rng.Intn(256))
			}
			img := c.mirror(initial)
			c.bImage = img
			backupWrites := logBackupWrites(c)
			c.start()
			c.incr(t, 5+rng.Intn(40))
			c.send()
			time.Sleep(time.Duration(rng.Intn(3000)) * time.Microsecond) // the random moment: the test's point
			c.crashPrimary()
			c.failover()
			backupWrites.check(t, img, initial, "the backup's image (over the primary's disk at the start)")
		})
	}
}

// flipOnce is a disk image that stores one write wrong, once: the first
// write that covers byte at gets it flipped, as a disk that corrupts data
// silently does.
type flipOnce struct {
	vmm.Disk
	at      int64
	flipped atomic.Bool
}

func (f *flipOnce) WriteAt(p []byte, off int64) (int, error) {
	if off <= f.at && f.at < off+int64(len(p)) && f.flipped.CompareAndSwap(false, true) {
		p = bytes.Clone(p)
		p[f.at-off] ^= 0x5a
	}
	return f.Disk.WriteAt(p, off)
}

// TestVerifyComparesTheMirroredImage (--verify, mirrored disks): the
// backup's image stores one byte of the full checkpoint's copy of the disk
// wrong. The disk hashes the checkpoint carries show it: the backup treats
// it as a divergence and asks for another full checkpoint, which copies the
// disk again; then it takes over with an image equal to the primary's disk.
func TestVerifyComparesTheMirroredImage(t *testing.T) {
	c := newCluster(t, "kv", sim.Param{Name: "journal", Value: 1000})
	c.cfg.Verify = true
	initial := make([]byte, 1<<20)
	for j := 700 << 10; j < len(initial); j++ {
		initial[j] = byte(j * 7)
	}
	img := c.mirror(initial)
	c.bImage = &flipOnce{Disk: img, at: 900 << 10}
	backupWrites := logBackupWrites(c)
	c.start()
	// The client waits for the resync: a write the guest made while the
	// primary pre-copied it would reach the image with a round, not by the
	// backup's replay, which is what this test's oracle counts
	// (TestMirroredImageThroughAPrecopyResync has those).
	vmmtest.WaitUntil(t, "the backup to find its image differs and be in sync again", func() bool {
		return c.backup.Stats.Divergences.Load() >= 1 && c.backup.Stats.Applied.Load() >= 1 && c.primary.InSync()
	})
	c.incr(t, 15)
	c.crashPrimary()
	c.failover()
	backupWrites.check(t, img, initial, "the backup's image (over the primary's disk at the start)")
}

// TestMirroredImageThroughAPrecopyResync: a backup with its own image
// diverges, and its full checkpoint comes by pre-copy while the kv guest
// journals the client's updates, alone: those writes reach the backup's
// image with the pre-copy's later passes or its commit, not by replay.
// After a graceful stop the backup, live, has an image equal to the
// primary's disk.
func TestMirroredImageThroughAPrecopyResync(t *testing.T) {
	c := newCluster(t, "kv", sim.Param{Name: "journal", Value: 1000})
	c.cfg = precopyConfig() // many small rounds, for writes between them
	initial := kvDiskData()
	img := c.mirror(initial)
	c.bImage = img
	c, release := divergeAndHoldTheResync(t, c)
	c.incr(t, 5) // answered: the primary is alone, and writes its journal
	close(release)
	drive(t, c, "kv", c.primary.InSync)
	c.incr(t, 5)
	c.stopPrimary()
	c.failover()
	got, want := make([]byte, len(initial)), make([]byte, len(initial))
	if _, err := img.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := c.disk.ReadAt(want, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("the live backup's image differs from the primary's disk")
	}
}

// kvDiskData is a 1 MiB disk for the kv guest, with data from 600 KiB on,
// which the guest never writes (its journal is sector 1000, in hash range
// 1 of 4).
func kvDiskData() []byte {
	d := make([]byte, 1<<20)
	for j := 600 << 10; j < len(d); j++ {
		d[j] = byte(j*7 + j>>12)
	}
	return d
}

// flipped is the byte mostlyTheDisk changes, in hash range 3 of 4.
const flipped = 900 << 10

// mostlyTheDisk gives c's primary disk initial and returns the backup's own
// image: initial but for byte flipped.
func mostlyTheDisk(c *cluster, initial []byte) *vmm.FileDisk {
	c.t.Helper()
	img := c.mirror(initial)
	mostly := bytes.Clone(initial)
	mostly[flipped] ^= 0x5a
	if _, err := img.WriteAt(mostly, 0); err != nil {
		c.t.Fatal(err)
	}
	return img
}

// TestPrecopyLeavesOutWhatTheBackupHas (mirrored disks): a backup
// attaches whose image is already the primary's disk but for one byte, in
// the last of its four hash ranges. Its pre-copy compares the backup's
// range hashes with the disk: of the first pass it sends the blocks of that
// range and of the one the guest's journal has changed (sector 1000, in
// range 1), and carries the other two as KEPT, without their data. The
// byte is repaired, and the backup then takes over.
func TestPrecopyLeavesOutWhatTheBackupHas(t *testing.T) {
	c := newCluster(t, "kv", sim.Param{Name: "journal", Value: 1000})
	initial := kvDiskData()
	img := mostlyTheDisk(c, initial)
	c.onPrimary = func(p *replay.Primary) { p.MirrorDisk(int64(len(initial))) }
	c.attachImage = img
	p, _, _ := c.alonePrimary(context.Background())
	c.incr(t, 5) // alone: the journal's sector now differs from the backup's image
	_, b, done, _ := c.attachBackup(p, "backup")
	c.waitAttached(b, done)
	const perRange = format.DiskHashRange / format.DiskBlockSize
	if got := p.Stats.KeptBlocks.Load(); got != 2*perRange {
		t.Errorf("the pre-copy found %d blocks on the backup's image, want %d (hash ranges 0 and 2)", got, 2*perRange)
	}
	takeOverAndCheck(t, c, done, img, initial)
}

// takeOverAndCheck has the backup take over after 5 more updates, then
// checks that its image holds the primary's disk past hash range 1 (the
// kv guest writes ranges 0 and 1).
func takeOverAndCheck(t *testing.T, c *cluster, done chan followResult, img io.ReaderAt, initial []byte) {
	t.Helper()
	c.incr(t, 5)
	c.stopPrimary()
	if r := vmmtest.Receive(t, "the backup to take over", done); r.err != nil {
		t.Fatalf("the backup did not take over: %v", r.err)
	}
	got := make([]byte, len(initial))
	if _, err := img.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	if lo := 2 * format.DiskHashRange; !bytes.Equal(got[lo:], initial[lo:]) {
		t.Fatal("the backup's image differs from the primary's disk past hash range 1, where the guest never writes")
	}
}

// stallingImage is a backup's image whose reads wait until release
// closes, as a disk too slow to hash in time does.
type stallingImage struct {
	vmm.Disk
	release chan struct{}
}

func (s *stallingImage) ReadAt(p []byte, off int64) (int, error) {
	<-s.release
	return s.Disk.ReadAt(p, off)
}

// TestPrecopyGoesOnWithoutImageHashes (mirrored disks): an attaching
// backup's image cannot be read to hash it (its reads stall until the
// sync's commit is sent). The pre-copy waits FailureTimeout for the
// hashes, then sends the disk's blocks with their data; the backup's image
// gets the primary's disk, and it takes over.
func TestPrecopyGoesOnWithoutImageHashes(t *testing.T) {
	c := newCluster(t, "kv", sim.Param{Name: "journal", Value: 1000})
	c.cfg.FailureTimeout = 2 * time.Second // how long the pre-copy waits for the hashes
	initial := kvDiskData()
	img := &stallingImage{Disk: c.mirror(initial), release: make(chan struct{})}
	var once sync.Once
	free := func() { once.Do(func() { close(img.release) }) }
	t.Cleanup(free)
	c.onPrimary = func(p *replay.Primary) { p.MirrorDisk(int64(len(initial))) }
	c.attachImage = img
	p, _, _ := c.alonePrimary(context.Background())
	c.incr(t, 5)
	_, b, done, _ := c.attachBackup(p, "backup")
	vmmtest.WaitUntil(t, "the sync's commit", func() bool { return p.Stats.Syncs.Load() >= 1 })
	if got := p.Stats.KeptBlocks.Load(); got != 0 {
		t.Fatalf("the pre-copy kept %d blocks without the backup's hashes", got)
	}
	free() // the backup compares its image with the commit's hashes (--verify)
	vmmtest.WaitUntil(t, "the backup in sync", func() bool { return b.Stats.Applied.Load() >= 1 })
	takeOverAndCheck(t, c, done, img, initial)
}

// TestFirstSyncLeavesOutWhatTheBackupHas (mirrored disks): a pair starts
// (the primary given its backup's connection, the guest not yet run), the
// backup's image the primary's disk but for one byte in the last of four
// hash ranges. The first full checkpoint waits for the image's hashes and
// carries the other three ranges' blocks as KEPT; the byte is repaired, and
// the backup's image holds the guest's history over the disk after
// failover.
func TestFirstSyncLeavesOutWhatTheBackupHas(t *testing.T) {
	c := newCluster(t, "kv", sim.Param{Name: "journal", Value: 1000})
	initial := kvDiskData()
	img := mostlyTheDisk(c, initial)
	c.bImage = img
	backupWrites := logBackupWrites(c)
	c.start()
	c.incr(t, 10)
	const perRange = format.DiskHashRange / format.DiskBlockSize
	if got := c.primary.Stats.KeptBlocks.Load(); got != 3*perRange {
		t.Errorf("the first full checkpoint sent %d blocks as the backup's, want %d (hash ranges 0 to 2)", got, 3*perRange)
	}
	c.crashPrimary()
	c.failover()
	backupWrites.check(t, img, initial, "the backup's image (over the primary's disk at the start)")
}

// TestPrecopyLeavesOutWhatTheBackupHolds: a backup attaches whose memory
// holds the guest already (HoldsMemory) — here, as any fresh machine's
// does, the guest as it booted. The pre-copy compares the backup's memory
// hashes with the running guest's memory: the pages of ranges the guest
// has not written since it booted go as KEPT, without their data — some,
// not all — and the full checkpoint's memory hash (Verify) agrees with
// the backup's memory, which a range kept wrongly would fail. Kept pages
// cost no bytes, so a round message takes more of them than PrecopyChunk
// (one range here): the sync needs fewer rounds than the guest has ranges.
// The backup then takes over.
func TestPrecopyLeavesOutWhatTheBackupHolds(t *testing.T) {
	c := newCluster(t, "kv")
	c.pages = 16 * format.MemHashRangePages // ranges the guest never writes
	c.cfg.PrecopyChunk = format.MemHashRangePages
	c.cfg.PrecopyCompare = vmmtest.Bound // the count below, not the host's speed, decides
	c.attachHolds = true
	p, _, _ := c.alonePrimary(context.Background())
	c.incr(t, 5)
	_, b, done, _ := c.attachBackup(p, "backup")
	c.waitAttached(b, done)
	if kept := p.Stats.KeptPages.Load(); kept == 0 || kept >= uint64(c.pages) {
		t.Errorf("the pre-copy found %d of %d pages in the backup's memory: want some, not all (the guest has run)", kept, c.pages)
	}
	if n := p.Stats.Resyncs.Load(); n != 0 {
		t.Errorf("the backup asked for %d full checkpoints: it rejected the pre-copied one", n)
	}
	if r := b.Stats.Rounds.Load(); r >= 16 {
		t.Errorf("the pre-copy took %d round messages, for 16 ranges most of which the backup has", r)
	}
	c.incr(t, 5)
	c.stopPrimary()
	if r := vmmtest.Receive(t, "the backup to take over", done); r.err != nil {
		t.Fatalf("the backup did not take over: %v", r.err)
	}
}

// waitAttached waits until b, attached by attachBackup (done), has applied
// its full checkpoint; either side failing first fails the test at once,
// saying why.
func (c *cluster) waitAttached(b *replay.Backup, done chan followResult) {
	c.t.Helper()
	vmmtest.WaitUntil(c.t, "the backup in sync", func() bool {
		select {
		case <-c.pDone:
			c.t.Fatalf("the primary stopped: %v", c.pErr)
		case r := <-done:
			c.t.Fatalf("the backup stopped: %v", r.err)
		default:
		}
		return b.Stats.Applied.Load() >= 1
	})
}

// faultyImage is a backup's disk image whose writes first ask fault, which
// may fail them or block them.
type faultyImage struct {
	vmm.Disk
	fault func() error
}

func (f *faultyImage) WriteAt(p []byte, off int64) (int, error) {
	if err := f.fault(); err != nil {
		return 0, err
	}
	return f.Disk.WriteAt(p, off)
}

// A disk write the backup cannot perform on its own image (a mirrored
// disk) is a lost backup, never a silent difference: the replayer stops
// with ErrImage, and the primary goes on alone.
func TestMirroredImageWriteFailureLosesTheBackup(t *testing.T) {
	c := newCluster(t, "kv", sim.Param{Name: "journal", Value: 1000})
	var fail atomic.Bool
	c.bImage = &faultyImage{Disk: c.mirror(make([]byte, 1<<20)), fault: func() error {
		if fail.Load() {
			return errors.New("EIO (test)")
		}
		return nil
	}}
	c.start()
	c.incr(t, 5)
	fail.Store(true)
	c.incr(t, 5)
	if r := vmmtest.Receive(t, "the backup to stop", c.bDone); !errors.Is(r.err, replay.ErrImage) || r.live != nil {
		t.Fatalf("the backup's Follow: %v (live %v), want ErrImage", r.err, r.live != nil)
	}
	vmmtest.WaitUntil(t, "the primary to go on alone", func() bool { return c.primary.Stats.BackupsLost.Load() >= 1 })
	c.incr(t, 5)
}

// TestStuckReplayerIsLost: the backup's image stops completing writes, so
// its replayer hangs on the guest's next disk write, while its receiver
// goes on acknowledging the log (acks are for the log received) and the
// kv guest's log is far from filling the backup's queue. The backup must
// give up on itself within about the failure timeout, so that its primary
// goes on alone instead of counting on a backup that cannot take over; the
// backup, once its image answers again, does not go live.
func TestStuckReplayerIsLost(t *testing.T) {
	c := newCluster(t, "kv", sim.Param{Name: "journal", Value: 1000})
	c.cfg.Heartbeat, c.cfg.FailureTimeout = 100*time.Millisecond, time.Second // how long the replayer may be stuck
	c.cfg.BackupQueueBytes = 16 << 20                                         // never full here: no push back on the primary
	var hang atomic.Bool
	release := make(chan struct{})
	var releaseOnce sync.Once
	c.bImage = &faultyImage{Disk: c.mirror(make([]byte, 1<<20)), fault: func() error {
		if hang.Load() {
			<-release
		}
		return nil
	}}
	c.start()
	t.Cleanup(func() { releaseOnce.Do(func() { close(release) }) }) // before the cluster's own cleanups
	c.incr(t, 5)
	hang.Store(true)
	c.incr(t, 5) // answered: the primary counts on the backup's acks
	vmmtest.WaitUntil(t, "the primary to go on alone", func() bool { return c.primary.Stats.BackupsLost.Load() >= 1 })
	c.incr(t, 5)
	releaseOnce.Do(func() { close(release) })
	if r := vmmtest.Receive(t, "the backup to stop", c.bDone); !errors.Is(r.err, replay.ErrReplayerStuck) || r.live != nil {
		t.Fatalf("the backup's Follow: %v (live %v), want ErrReplayerStuck and not live", r.err, r.live != nil)
	}
}

// TestResyncWhileTheGuestFlushes: the kv guest flushes its disk after
// every update, before replying, and a flush waits for the backup's acks
// of the writes it covers. A backup that asks for a full checkpoint gives
// no more acks before one, which the primary sends only at a boundary, not
// in the flush's exit: the primary used to wait there for ever (found by
// the emulated KVM run, where a slow backup's request came while the guest
// flushed). Here the request reaches the primary late, so that the guest
// is flushing when it comes:
//   - a backup that diverged cannot go live before its full checkpoint:
//     the flush's writes are released, and the resync goes on;
//   - one that lost part of the log could take over from before the gap:
//     what came after stays held, and the link is dropped instead; the
//     witness decides which of the two goes on.
//
// Either way the client is answered.
func TestResyncWhileTheGuestFlushes(t *testing.T) {
	start := func(t *testing.T, spoil func(armed, spoiled *atomic.Bool) filter) (*cluster, *atomic.Bool) {
		c := newCluster(t, "kv", sim.Param{Name: "journal", Value: 1000}, sim.Param{Name: "flush", Value: 1})
		var armed, spoiled atomic.Bool
		c.up = spoil(&armed, &spoiled)
		c.down = linktest.Frames(func(typ uint16, _ []byte) bool {
			if format.MsgType(typ) == format.MsgResync {
				time.Sleep(300 * time.Millisecond) // the guest flushes meanwhile
			}
			return true
		})
		c.start()
		c.incr(t, 10)
		armed.Store(true)
		return c, &spoiled
	}
	t.Run("divergence", func(t *testing.T) {
		c, spoiled := start(t, func(armed, spoiled *atomic.Bool) filter {
			return flipValue(spoiled, func(*replay.Batch) bool { return armed.Load() })
		})
		drive(t, c, "kv", func() bool { return spoiled.Load() && c.backup.Stats.Applied.Load() >= 2 && c.primary.InSync() })
		if n := c.primary.Stats.BackupsLost.Load(); n != 0 {
			t.Errorf("the primary lost its backup %d times", n)
		}
		c.incr(t, 5)
	})
	t.Run("gap", func(t *testing.T) {
		c, spoiled := start(t, func(armed, spoiled *atomic.Bool) filter {
			return linktest.Frames(func(typ uint16, payload []byte) bool {
				if format.MsgType(typ) == format.MsgLog && armed.Load() && !spoiled.Swap(true) {
					payload[len(payload)/2] ^= 0x10
				}
				return true
			})
		})
		for c.primary.Stats.BackupsLost.Load() == 0 {
			c.send() // the next update, to flush
			select {
			case <-c.pDone: // the backup won the witness: the primary halted
				c.failover()
				c.runLive()
			case <-time.After(10 * time.Millisecond):
				continue
			}
			break
		}
		if !spoiled.Load() {
			t.Fatal("no batch was spoiled")
		}
		c.incr(t, 5)
	})
}
