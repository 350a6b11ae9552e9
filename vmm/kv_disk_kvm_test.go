package vmm

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"net"
	"path/filepath"
	"regexp"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/ftckpt/ftckpt/vmm/vmmtest"
)

// The kv guest's disk layout (guests/pure/kvtable.h): two table copies of
// 64 sectors, then the journal; update n is in sector 128 + n%journal.
const (
	kvJournalBase = 128
	kvJournalLen  = 1000
	kvJournalMag  = 0x4C4A564B // "KVJL"
)

// kvDiskOp is one request the kv guest's disk saw: a write's first sector
// and length, or a flush (sector -1).
type kvDiskOp struct {
	sector int64
	bytes  int
}

// orderDisk records the order of writes and flushes, so a test can tell
// what had reached the disk when the client got a reply.
type orderDisk struct {
	Disk
	mu  sync.Mutex
	ops []kvDiskOp
}

func (d *orderDisk) WriteAt(p []byte, off int64) (int, error) {
	d.mu.Lock()
	d.ops = append(d.ops, kvDiskOp{off / sectorSize, len(p)})
	d.mu.Unlock()
	return d.Disk.WriteAt(p, off)
}

func (d *orderDisk) Flush() error {
	d.mu.Lock()
	d.ops = append(d.ops, kvDiskOp{-1, 0})
	d.mu.Unlock()
	return d.Disk.Flush()
}

// flushedSince says whether a write of sector was followed by a flush, and
// returns how many ops there are now.
func (d *orderDisk) flushedSince(from int, sector int64) (bool, int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	written := false
	for _, op := range d.ops[from:] {
		switch {
		case op.sector == sector:
			written = true
		case op.sector == -1 && written:
			return true, len(d.ops)
		}
	}
	return false, len(d.ops)
}

// runKvOnDisk boots the kv guest on disk with params and a UDP front,
// waits for it to serve, and returns the machine, its console and a
// client connected to it. Everything is closed when the test ends.
func runKvOnDisk(t *testing.T, disk Disk, params map[string]string) (*Machine, *vmmtest.Console, *net.UDPConn) {
	t.Helper()
	front, err := NewUDPFront(UDPFrontConfig{Listen: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { front.Close() })
	var dev *VirtioNet
	m, con := newDeviceMachine(t, "kv", params, func(m *Machine) []BootDevice {
		nd, d, err := m.AttachVirtioNet(NetConfig{Sink: front})
		if err != nil {
			t.Fatal(err)
		}
		dev = d
		bd, _, err := m.AttachVirtioBlk(BlkConfig{Disk: disk})
		if err != nil {
			t.Fatal(err)
		}
		return []BootDevice{nd, bd}
	})
	if err := front.Start(dev); err != nil {
		t.Fatal(err)
	}
	if err := m.Start(); err != nil {
		t.Fatal(err)
	}
	con.WaitFor(t, m, regexp.MustCompile(`kv: start .* journal=1000 persist_every=4 flush=1\n`))
	c, err := net.DialUDP("udp4", nil, front.Addr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return m, con, c
}

// kvAsk sends req and returns the reply.
func kvAsk(t *testing.T, c *net.UDPConn, con *vmmtest.Console, req string) string {
	t.Helper()
	buf := make([]byte, 256)
	if _, err := c.Write([]byte(req)); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(time.Minute))
	n, err := c.Read(buf)
	if err != nil {
		t.Fatalf("%s: %v\n%s", req, err, con.String())
	}
	return string(buf[:n])
}

// TestKVMKvGuestJournalsToDisk runs the kv guest with a file disk,
// journal=1000 and flush=1: every INCR's reply comes only after its
// journal sector was written and flushed, the image holds the journal
// sector of every update (the update count at byte 16, as the vmm/sim
// tests read it), and a second machine on the same image loads the table
// and counts on from the last table write.
func TestKVMKvGuestJournalsToDisk(t *testing.T) {
	path := filepath.Join(t.TempDir(), "disk.img")
	file, err := CreateFileDisk(path, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	defer file.Close()
	params := map[string]string{"journal": strconv.Itoa(kvJournalLen), "flush": "1"}
	disk := &orderDisk{Disk: file}
	m, con, c := runKvOnDisk(t, disk, params)
	if !regexp.MustCompile(`kv: new table\n`).MatchString(con.String()) {
		t.Fatalf("a zeroed disk did not give a new table:\n%s", con.String())
	}
	const incrs = 6 // the table is written at update 4 (persist_every=4)
	seen := 0
	for n := 1; n <= incrs; n++ {
		if got, want := kvAsk(t, c, con, "INCR a"), fmt.Sprintf("%d VALUE %d", n, n); got != want {
			t.Fatalf("INCR %d: got %q, want %q\n%s", n, got, want, con.String())
		}
		var ok bool
		if ok, seen = disk.flushedSince(seen, kvJournalBase+int64(n)%kvJournalLen); !ok {
			t.Fatalf("reply %d came before its journal sector was written and flushed (ops since the last reply start at %d)", n, seen)
		}
	}
	if got, want := kvAsk(t, c, con, "GET a"), fmt.Sprintf("%d VALUE %d", incrs+1, incrs); got != want {
		t.Fatalf("GET: got %q, want %q", got, want)
	}
	m.Close()

	sector := make([]byte, sectorSize)
	for n := uint64(1); n <= incrs; n++ {
		if _, err := file.ReadAt(sector, int64(kvJournalBase+n%kvJournalLen)*sectorSize); err != nil {
			t.Fatal(err)
		}
		if got := binary.LittleEndian.Uint64(sector[16:]); got != n {
			t.Errorf("the journal sector of update %d holds update %d", n, got)
		}
		klen, vlen := int(sector[24]), int(sector[25])
		if binary.LittleEndian.Uint32(sector) != kvJournalMag ||
			binary.LittleEndian.Uint32(sector[508:]) != crc32.ChecksumIEEE(sector[:508]) ||
			string(sector[26:26+klen]) != "a" || string(sector[58:58+vlen]) != strconv.FormatUint(n, 10) {
			t.Errorf("journal sector of update %d: %x", n, sector[:64])
		}
	}
	if _, err := file.ReadAt(sector, 0); err != nil {
		t.Fatal(err)
	}
	if got := binary.LittleEndian.Uint64(sector[16:]); got != 4 {
		t.Errorf("table copy 0 includes %d updates, want 4", got)
	}

	// A restart on the same image: updates 5 and 6 were only journalled,
	// so the table says a=4 and the counter goes on from there.
	again, err := OpenFileDisk(path, false)
	if err != nil {
		t.Fatal(err)
	}
	defer again.Close()
	m2, con2, c2 := runKvOnDisk(t, again, params)
	if !regexp.MustCompile(`kv: loaded 1 keys \(copy 0, update 4\)\n`).MatchString(con2.String()) {
		t.Fatalf("the second machine did not load the table:\n%s", con2.String())
	}
	if got := kvAsk(t, c2, con2, "INCR a"); got != "1 VALUE 5" {
		t.Fatalf("INCR after the restart: got %q, want \"1 VALUE 5\"\n%s", got, con2.String())
	}
	m2.Close()
	if _, err := again.ReadAt(sector, kvJournalBase*sectorSize+5*sectorSize); err != nil {
		t.Fatal(err)
	}
	if got := binary.LittleEndian.Uint64(sector[16:]); got != 5 {
		t.Errorf("after the restart, update 5's journal sector holds update %d", got)
	}
}
