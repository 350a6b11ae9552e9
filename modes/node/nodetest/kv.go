package nodetest

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/ftckpt/ftckpt/modes/node"
	"github.com/ftckpt/ftckpt/vmm/sim"
	"github.com/ftckpt/ftckpt/vmm/vmmtest"
)

// KVClient is a UDP client of the kv guest, on either machine (their
// replies are alike: "SEQ VALUE V"). It increments three keys in turn
// (distinct requests: a reply the backup could not reproduce shows as one
// reply number with two contents, or a key's count off), sends each
// request until a new reply comes (UDP: at least once), and checks every
// reply against what one machine would say, across failovers:
//
//   - reply numbers run on without a gap, except that in checkpoint mode
//     the replies of the last epochs die with a crashed primary (a packet
//     lost on the network);
//   - a number seen twice carries the same reply, and only in replay mode
//     (the backup may repeat the last outputs at the boundary; checkpoint
//     mode never repeats a released one);
//   - each key's value rises by exactly one per execution of its INCR: a
//     resent request may run twice, and may run again after replies lost.
//
// Use from the test's goroutine.
type KVClient struct {
	t    testing.TB
	conn *net.UDPConn
	// Resend, if set, is how long a request waits for its reply before it
	// is sent again; 0 is 100 ms until the guest first answers (it may not
	// be listening yet), then a second (a reply slow under load is not
	// taken for lost: a needless resend runs the INCR twice, and two in a
	// row confuse the judge). Set it short for the request in flight at a
	// failover. It paces the resends: it decides nothing.
	Resend time.Duration

	// lossy and repeats are the mode's allowances (above).
	lossy, repeats bool

	sent, attempts int
	maxSeq         uint64
	// unseen counts the executions whose replies never came (checkpoint
	// mode: lost at a failover) that no value has accounted for yet: each
	// ran some INCR, whichever key it was.
	unseen  uint64
	bySeq   map[uint64]string
	values  map[string]uint64
	prevKey string
	// prevRetried: the previous request was sent more than once, so it
	// may have run twice.
	prevRetried bool
	buf         []byte
}

// NewKVClient returns a client of the kv guest at addr, judging replies
// as mode's. It is closed when the test ends.
func NewKVClient(t testing.TB, addr string, mode node.Mode) *KVClient {
	t.Helper()
	ua, err := net.ResolveUDPAddr("udp4", addr)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := net.DialUDP("udp4", nil, ua)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return &KVClient{t: t, conn: conn, lossy: mode == node.ModeCheckpoint, repeats: mode == node.ModeReplay,
		bySeq: map[uint64]string{}, values: map[string]uint64{}, buf: make([]byte, 2048)}
}

var kvKeys = []string{"a", "b", "c"}

func (c *KVClient) key() string { return kvKeys[c.sent%len(kvKeys)] }

// Send sends the request being made (again): a request in flight when the
// test crashes the primary. The next Incr goes on sending it.
func (c *KVClient) Send() {
	c.attempts++
	c.conn.Write([]byte("INCR " + c.key()))
}

// Incr makes one request: it sends INCR of the next key until a reply to
// it comes, checking every reply.
func (c *KVClient) Incr() {
	c.t.Helper()
	deadline := time.Now().Add(vmmtest.Bound)
	key := c.key()
	for answered := false; !answered; {
		if time.Now().After(deadline) {
			c.t.Fatalf("no reply to INCR %s in %v", key, vmmtest.Bound)
		}
		c.Send()
		resend := c.Resend
		switch {
		case resend != 0:
		case c.maxSeq == 0:
			resend = 100 * time.Millisecond
		default:
			resend = time.Second
		}
		answered = c.await(key, time.Now().Add(resend))
	}
	c.answered(key)
}

// Await waits up to d for the reply to the request Send sent, sending
// nothing again, and reports whether it came: a reply a primary held when
// it was stopped comes only if it handed its guest over. Once it has, the
// request is made: the next Incr makes the next one.
func (c *KVClient) Await(d time.Duration) bool {
	c.t.Helper()
	key := c.key()
	if !c.await(key, time.Now().Add(d)) {
		return false
	}
	c.answered(key)
	return true
}

// await reads replies, checking each, until one answers INCR key or it is
// time; it reports whether one answered.
func (c *KVClient) await(key string, until time.Time) bool {
	c.t.Helper()
	c.conn.SetReadDeadline(until)
	for {
		n, err := c.conn.Read(c.buf)
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return false
		}
		if err != nil {
			// Nothing listens at the address (between a primary's end and
			// its backup going live): wait out the time.
			time.Sleep(time.Until(until))
			return false
		}
		answered, err := c.judge(key, string(c.buf[:n]))
		if err != nil {
			c.t.Fatal(err)
		}
		if answered {
			return true
		}
	}
}

// answered ends the request for key, answered.
func (c *KVClient) answered(key string) {
	c.prevKey, c.prevRetried = key, c.attempts > 1
	c.sent, c.attempts = c.sent+1, 0
}

// judge checks reply r received while INCR key is being asked, and says
// whether it answers it; an error says how it is not one machine's.
func (c *KVClient) judge(key, r string) (bool, error) {
	kr, err := sim.ParseKVPayload([]byte(r))
	if err != nil || kr.Status != "VALUE" {
		return false, fmt.Errorf("reply %q to INCR %s: %v", r, key, err)
	}
	if prev, ok := c.bySeq[kr.Seq]; ok {
		if prev != r || !c.repeats {
			return false, fmt.Errorf("reply %d was %q and then %q: not one machine", kr.Seq, prev, r)
		}
		return false, nil // the failover boundary's repeat
	}
	c.bySeq[kr.Seq] = r
	switch {
	case c.maxSeq == 0 || kr.Seq == c.maxSeq+1:
	case kr.Seq > c.maxSeq && c.lossy:
		c.unseen += kr.Seq - c.maxSeq - 1
	default:
		return false, fmt.Errorf("reply %d after reply %d: a reply was lost", kr.Seq, c.maxSeq)
	}
	c.maxSeq = kr.Seq
	v, _ := strconv.ParseUint(kr.Value, 10, 64)
	switch {
	case v == c.values[key]+1:
		c.values[key] = v
		return true, nil
	case v > c.values[key]+1 && v-c.values[key]-1 <= c.unseen:
		// It ran again after replies lost: now, or before (the lost
		// reply of a request resent before the failover, which ran
		// twice, shows when its key comes round again).
		c.unseen -= v - c.values[key] - 1
		c.values[key] = v
		return true, nil
	case c.prevRetried && v == c.values[c.prevKey]+1:
		c.values[c.prevKey] = v // the resent request ran twice
		return false, nil
	}
	return false, fmt.Errorf("INCR %s answered %q after value %d: not one machine (values %v; replies so far %v; this request sent %d times, the one before retried %v)",
		key, r, c.values[key], c.values, c.bySeq, c.attempts, c.prevRetried)
}

// Requests is how many requests were answered.
func (c *KVClient) Requests() int { return c.sent }

// LastSeq is the highest reply number seen.
func (c *KVClient) LastSeq() uint64 { return c.maxSeq }

// Journal is the first sector of the kv guest's journal on machine (its
// param journal=1000: update n writes the sector Journal+n%1000, holding n
// at byte 16).
func Journal(m node.Machine) int64 {
	if m == node.MachineSim {
		return 16
	}
	return 128 // guests/pure/kvtable.h: two table copies of 64 sectors first
}

// CheckJournal checks that the kv guest's journal on the disk image holds
// every update up to last (param journal=1000, flush=1: a FLUSH precedes
// each reply, so every update a reply reported must be on the disk).
func CheckJournal(t testing.TB, image string, m node.Machine, last uint64) {
	t.Helper()
	f, err := os.Open(image)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sector := make([]byte, sim.DiskSectorSize)
	for seq := uint64(1); seq <= last; seq++ {
		if _, err := f.ReadAt(sector, (Journal(m)+int64(seq%1000))*sim.DiskSectorSize); err != nil {
			t.Fatal(err)
		}
		if got := binary.LittleEndian.Uint64(sector[16:]); got != seq {
			t.Errorf("the journal sector of update %d holds update %d: a reported update is not on the disk", seq, got)
		}
	}
}
