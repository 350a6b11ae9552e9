package checkpoint

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	format "github.com/ftckpt/ftckpt/checkpoint"
	"github.com/ftckpt/ftckpt/checkpoint/linktest"
	"github.com/ftckpt/ftckpt/vmm/vmmtest"
)

// chanListener is a net.Listener whose connections the test hands over.
type chanListener struct {
	conns     chan net.Conn
	closed    chan struct{}
	closeOnce sync.Once
}

func newChanListener() *chanListener {
	return &chanListener{conns: make(chan net.Conn), closed: make(chan struct{})}
}

func (l *chanListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.closed:
		return nil, net.ErrClosed
	}
}

func (l *chanListener) Close() error {
	l.closeOnce.Do(func() { close(l.closed) })
	return nil
}

func (l *chanListener) Addr() net.Addr { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)} }

// startAlone starts p's primary running alone (Protect), taking backups
// from the returned listener, and builds p's backup without connecting it.
func (p *pair) startAlone(pages uint64) *chanListener {
	t := p.t
	ctx := context.Background()
	p.build(pages)
	ln := newChanListener()
	if err := p.pg.Start(); err != nil {
		t.Fatal(err)
	}
	pctx, cancel := context.WithCancel(ctx)
	p.cancelP = cancel
	go func() { p.pDone <- p.primary.Protect(pctx, nil, ln, nil) }()
	t.Cleanup(func() {
		cancel()
		p.link.Cut()
		p.pg.Pause()
		p.bg.Pause()
	})
	return ln
}

// stallAtCheckpoint is a Filter that passes messages until the nth
// checkpoint (from 1; the first, a full sync's first round), says so on
// reached, and then reads nothing more until release is closed: the
// primary's writes fill the link's buffers and wait, its sync stuck there.
func stallAtCheckpoint(n int, reached chan<- struct{}, release <-chan struct{}) linktest.Filter {
	return func(from io.Reader, to io.Writer) {
		hdr := make([]byte, 8)
		for {
			if _, err := io.ReadFull(from, hdr); err != nil {
				return
			}
			if format.MsgType(binary.LittleEndian.Uint16(hdr[6:])) == format.MsgCheckpoint {
				if n--; n == 0 {
					reached <- struct{}{}
					<-release
					return
				}
			}
			body := make([]byte, binary.LittleEndian.Uint32(hdr))
			if _, err := io.ReadFull(from, body); err != nil {
				return
			}
			if _, err := to.Write(append(hdr, body...)); err != nil {
				return
			}
		}
	}
}

// TestBackupLostDuringPrecopyCostsNothing: a primary runs alone, outputs
// released at once; a backup joins, and its link stalls in the full sync's
// first round (the guest runs on, its outputs still released), then is
// cut: the primary runs on alone without asking the witness. A second
// backup then joins, commits, and on the primary's crash goes live with
// generation 2: the lost joiner cost no generation.
func TestBackupLostDuringPrecopyCostsNothing(t *testing.T) {
	p := newPair(t, testConfig())
	p.link.Buffer = 4096 // the first round (4096 pages) cannot all be in flight
	ln := p.startAlone(4096)
	p.client.waitCount(t, 5) // alone: released at once

	reached, release := make(chan struct{}, 1), make(chan struct{})
	t.Cleanup(func() { close(release) })
	p.link.SetFilter(linktest.Up, stallAtCheckpoint(1, reached, release))
	conn, bconn := p.link.Pipe()
	ln.conns <- conn
	lost := make(chan error, 1)
	go func() { lost <- p.backup.Receive(context.Background(), bconn) }()
	vmmtest.Receive(t, "the joining backup's first round", reached)
	got, _ := p.client.snapshot()
	p.client.waitCount(t, len(got)+5) // pre-copy: still released at once
	p.link.Cut()
	vmmtest.Receive(t, "the joining backup's receiver to end", lost)
	got, _ = p.client.snapshot()
	p.client.waitCount(t, len(got)+5) // alone again
	if gen, state := p.primary.fence.Held(); gen != 1 || state != "valid" {
		t.Fatalf("after losing a joining backup the primary's fence holds generation %d (%s), want 1 (valid)", gen, state)
	}
	if st := p.backup.Status(); st.State == format.StateCommitted {
		t.Fatalf("the first joiner committed epoch %d", st.Epoch)
	}

	// A second backup (the same engine, as a joiner trying again) joins
	// on a healthy link and commits.
	p.link.SetFilter(linktest.Up, nil)
	p.follow(ln, nil)
	vmmtest.WaitUntil(t, "the second backup to commit", func() bool {
		return p.backup.Status().State == format.StateCommitted
	})
	p.failoverToJoiner(2)
}

// follow has p's backup follow the primary that takes backups from ln
// (Backup.Follow: each dial a new connection on p's link), in the
// background, until it goes live (its generation to bDone, as errGen) or
// fails. before, if set, is called before each dial with its number, from
// 1, and may block.
func (p *pair) follow(ln *chanListener, before func(dial int)) {
	dials := 0
	go func() {
		gen, err := p.backup.Follow(context.Background(), func(ctx context.Context) (net.Conn, error) {
			if dials++; before != nil {
				before(dials)
			}
			conn, bconn := p.link.Pipe()
			select {
			case ln.conns <- conn:
			case <-ln.closed:
				return nil, net.ErrClosed
			}
			return bconn, nil
		})
		p.bDone <- errors.Join(err, errGen(gen))
	}()
}

// failoverToJoiner waits for 5 more outputs (the guest protected: released
// on acks), crashes the primary, and checks that the backup that joined
// goes live with generation want and the client's view is one machine's.
func (p *pair) failoverToJoiner(want uint64) {
	t := p.t
	t.Helper()
	got, _ := p.client.snapshot()
	p.client.waitCount(t, len(got)+5)
	p.crashPrimary(false)
	err := vmmtest.Receive(t, "the backup to go live", p.bDone)
	var g errGen
	if !errors.As(err, &g) || uint64(g) != want {
		t.Fatalf("the backup went live with %v, want generation %d", err, want)
	}
	if err := p.bOut.Commit(^uint64(0)); err != nil {
		t.Fatal(err)
	}
	p.checkOutcome(5)
}

// errGen carries the generation Follow won through its error.
type errGen uint64

func (g errGen) Error() string { return "generation" }

// TestFullSyncLeavesOutWhatTheBackupHas (mirrored disks): the backup's
// image starts as the primary's disk but for one byte, in a hash range
// past the guest's slots. The full sync's first round compares the
// backup's range hashes with the disk: the blocks of every range past the
// slots but that one go as KEPT, without their data, that range's with
// it; the byte is repaired, and the pair then fails over as after any
// sync.
func TestFullSyncLeavesOutWhatTheBackupHas(t *testing.T) {
	p := newPair(t, testConfig())
	p.mirrored, p.tail = true, 6*format.DiskHashRange
	var (
		flipped int64
		good    byte
		synced  = make(chan SyncStep, 1)
	)
	p.onBackupDisk = func(d *vmmtest.MemDisk) {
		img := bytes.Clone(p.disk.Bytes())
		flipped = int64(len(img)) - 2*format.DiskHashRange
		good = img[flipped]
		img[flipped] ^= 0x5a
		d.SetImage(img)
		p.primary.SetSyncObserver(func(s SyncStep) {
			if s.Finished {
				select {
				case synced <- s:
				default:
				}
			}
		})
	}
	p.start(64)
	s := vmmtest.Receive(t, "the full sync's commit", synced)
	// The ranges wholly past the guest's slots are the guest's to leave
	// alone: all equal on both sides but the one with the flipped byte.
	size := p.disk.Size()
	ranges := format.DiskHashRanges(size)
	firstUntouched := (uint64(p.pg.slots*recordSize) + format.DiskHashRange - 1) / format.DiskHashRange
	perRange := uint64(format.DiskHashRange / format.DiskBlockSize)
	least := 0
	for r := firstUntouched; r < ranges; r++ {
		if int64(r) != flipped/format.DiskHashRange {
			least += int(min(perRange, format.DiskBlocks(size)-r*perRange))
		}
	}
	if most := int(format.DiskBlocks(size)) - int(perRange); s.KeptBlocks < least || s.KeptBlocks > most {
		t.Fatalf("the sync found %d blocks on the backup's image, want %d to %d", s.KeptBlocks, least, most)
	}
	vmmtest.WaitUntil(t, "the backup to commit the sync", func() bool { return p.backup.Status().State == format.StateCommitted })
	if got := p.bdisk.Bytes()[flipped]; got != good {
		t.Fatalf("the backup's image still has the flipped byte at %d: %#x, the disk %#x", flipped, got, good)
	}
	p.client.waitCount(t, 30)
	p.crashPrimary(false)
	p.failover()
	p.checkOutcome(30)
}

// TestFullSyncGoesOnWithoutImageHashes (mirrored disks): the backup's
// image cannot be read to hash it (its reads stall until the sync's commit
// is written). The primary waits FailureTimeout for the hashes, then sends
// the rest of the disk with its data: the sync commits, the backup's image
// is the disk, and the pair fails over as after any sync.
func TestFullSyncGoesOnWithoutImageHashes(t *testing.T) {
	cfg := testConfig()
	cfg.FailureTimeout = 2 * time.Second // how long the primary waits for the hashes
	p := newPair(t, cfg)
	p.mirrored = true
	release := make(chan struct{})
	var once sync.Once
	free := func() { once.Do(func() { close(release) }) }
	t.Cleanup(free)
	synced := make(chan SyncStep, 1)
	p.onBackupDisk = func(d *vmmtest.MemDisk) {
		d.AfterRead = func() { <-release }
		p.primary.SetSyncObserver(func(s SyncStep) {
			if s.Finished {
				free()
				select {
				case synced <- s:
				default:
				}
			}
		})
	}
	p.start(64)
	if s := vmmtest.Receive(t, "the full sync's commit", synced); s.KeptBlocks != 0 {
		t.Fatalf("the sync kept %d blocks without the backup's hashes", s.KeptBlocks)
	}
	vmmtest.WaitUntil(t, "the backup to commit the sync", func() bool { return p.backup.Status().State == format.StateCommitted })
	p.client.waitCount(t, 30)
	p.crashPrimary(false)
	p.failover()
	p.checkOutcome(30)
}

// TestRejoiningBackupKeepsItsMemory: a backup joins a primary running
// alone, whose guest writes only its first pages, and its link stalls
// after the sync's first round, then is cut: the backup's memory holds the
// guest as that round read it, and nothing committed. It joins again and
// offers its memory's hashes: the second sync's first round carries the
// pages of every range equal on both sides as KEPT — those past the
// pages the guest writes, and not range 0, which it writes at every step
// — and commits (--verify's memory hash agrees, which a range kept wrongly
// would fail); the pair then fails over as after any sync.
func TestRejoiningBackupKeepsItsMemory(t *testing.T) {
	const pages, span = 8192, 1000
	cfg := testConfig()
	cfg.PrecopyDone = 0 // a second round, however few pages the guest dirtied
	p := newPair(t, cfg)
	p.guestSpan = span
	var blog vmmtest.Console // the backup's log
	p.backupLog = slog.New(slog.NewTextHandler(&blog, nil))
	ln := p.startAlone(pages)
	p.client.waitCount(t, 5)
	synced := make(chan SyncStep, 4)
	p.primary.SetSyncObserver(func(s SyncStep) {
		if s.Finished {
			synced <- s
		}
	})
	reached, release := make(chan struct{}, 1), make(chan struct{})
	t.Cleanup(func() { close(release) })
	p.link.SetFilter(linktest.Up, stallAtCheckpoint(2, reached, release)) // the first round is one message
	again := make(chan struct{})
	p.follow(ln, func(dial int) {
		if dial > 1 {
			<-again
		}
	})
	vmmtest.Receive(t, "the first sync's second round", reached)
	vmmtest.WaitUntil(t, "the backup to apply the first sync's first round", func() bool {
		return p.backup.Status().State == format.StateSyncing
	})
	p.link.Cut()
	p.link.SetFilter(linktest.Up, nil)
	got, _ := p.client.snapshot()
	p.client.waitCount(t, len(got)+5) // alone again: range 0 written since
	close(again)

	s := vmmtest.Receive(t, "the second sync's commit", synced)
	untouched := pages - (span+format.MemHashRangePages-1)/format.MemHashRangePages*format.MemHashRangePages
	if s.KeptPages < untouched || s.KeptPages > pages-format.MemHashRangePages {
		t.Fatalf("the second sync kept %d of %d pages: want at least the %d past those the guest writes, not range 0's", s.KeptPages, pages, untouched)
	}
	vmmtest.WaitUntil(t, "the backup to commit the second sync", func() bool {
		if strings.Contains(blog.String(), "checkpoint rejected") {
			t.Fatalf("the backup rejected a checkpoint of the second sync:\n%s", blog.String())
		}
		return p.backup.Status().State == format.StateCommitted
	})
	p.failoverToJoiner(2) // the first join cost no generation
}

// TestRejectedRoundSpoilsTheSync: a backup joins a guest that dirties
// pages all through its sync, and rejects a pre-copy round after the first
// (a byte flipped in flight). Its pages are not in the
// backup's memory, yet the primary's cache holds them as the backup's: a
// later round's page sent as a delta against one, or one not sent again,
// would leave the backup's copy wrong, and a commit without --verify would
// not notice. The backup must drop that sync, not commit it, and name the
// round in its request for a sync: the primary then waits neither for
// rounds it will not apply nor for its refused commit's ack (for
// FailureTimeout each), and syncs again; the pair fails over to the
// guest's exact memory. The backup, should it lose its link, would offer
// the memory it holds to its next primary (HoldsMemory).
func TestRejectedRoundSpoilsTheSync(t *testing.T) {
	cfg := testConfig()
	cfg.Verify = false  // what would catch it otherwise
	cfg.PrecopyDone = 0 // a second round, however few pages the guest dirtied
	p := newPair(t, cfg)
	var blog, plog vmmtest.Console // the backup's log, the primary's
	p.backupLog = slog.New(slog.NewTextHandler(&blog, nil))
	p.primaryLog = slog.New(slog.NewTextHandler(&plog, nil))
	ln := p.startAlone(4096) // the guest dirties pages all through the sync
	p.client.waitCount(t, 5)
	p.link.SetFilter(linktest.Up, corruptFirst(func(h format.Header) bool {
		return h.Kind == format.KindSyncRound && h.Flags&format.FlagSyncStart == 0
	}))
	p.follow(ln, nil)
	vmmtest.WaitUntil(t, "the backup to commit a sync", func() bool {
		return p.backup.Status().State == format.StateCommitted
	})
	if !strings.Contains(blog.String(), "checkpoint rejected") {
		t.Fatalf("no pre-copy round was rejected:\n%s", blog.String())
	}
	if !p.backup.holds {
		t.Error("the backup that dropped a sync would not offer its memory to its next primary")
	}
	for _, waited := range []string{"the backup applies no pre-copy round", "full sync not acknowledged"} {
		if strings.Contains(plog.String(), waited) {
			t.Fatalf("the primary waited (%q):\n%s", waited, plog.String())
		}
	}
	p.failoverToJoiner(2)
}

// TestResyncKeepsWhatTheBackupHolds (mirrored disks): once the pair is in
// step, the backup rejects an epoch (a byte flipped in flight) and asks
// for a full sync. That sync asks for the backup's hashes again: its
// memory and image are the last committed epoch's, and its first round
// carries as KEPT every range the guest has not written since, of memory
// and of the disk — at least the pages past those the guest writes and
// the ranges past its slots — and commits (--verify's memory and disk
// hashes agree, which a range kept wrongly would fail); the pair then
// fails over to the guest's exact memory.
func TestResyncKeepsWhatTheBackupHolds(t *testing.T) {
	const pages, span = 8192, 1000
	p := newPair(t, testConfig())
	p.mirrored, p.tail = true, 6*format.DiskHashRange
	p.guestSpan = span
	synced := make(chan SyncStep, 4)
	p.onBackupDisk = func(*vmmtest.MemDisk) {
		p.primary.SetSyncObserver(func(s SyncStep) {
			if s.Finished {
				synced <- s
			}
		})
	}
	p.link.SetFilter(linktest.Up, corruptFirst(func(h format.Header) bool { return h.Kind == format.KindEpoch && h.Epoch >= 10 }))
	p.start(pages)
	vmmtest.Receive(t, "the first sync's commit", synced)
	s := vmmtest.Receive(t, "the second sync's commit", synced)

	untouched := pages - (span+format.MemHashRangePages-1)/format.MemHashRangePages*format.MemHashRangePages
	if s.KeptPages < untouched || s.KeptPages > pages-format.MemHashRangePages {
		t.Fatalf("the second sync kept %d of %d pages: want at least the %d past those the guest writes, not range 0's", s.KeptPages, pages, untouched)
	}
	size := p.disk.Size()
	perRange := uint64(format.DiskHashRange / format.DiskBlockSize)
	firstUntouched := (uint64(p.pg.slots*recordSize) + format.DiskHashRange - 1) / format.DiskHashRange
	least := int(format.DiskBlocks(size) - min(format.DiskBlocks(size), firstUntouched*perRange))
	if most := int(format.DiskBlocks(size) - perRange); s.KeptBlocks < least || s.KeptBlocks > most {
		t.Fatalf("the second sync kept %d disk blocks, want %d to %d", s.KeptBlocks, least, most)
	}
	vmmtest.WaitUntil(t, "the backup to commit the second sync", func() bool {
		return p.backup.Status().State == format.StateCommitted
	})
	p.client.waitCount(t, 20)
	p.crashPrimary(false)
	p.failover()
	p.checkOutcome(20)
}
