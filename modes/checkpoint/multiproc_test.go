package checkpoint

import (
	"bufio"
	"context"
	"fmt"
	"log/slog"
	"math/rand"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ftckpt/ftckpt/outbuf"
	"github.com/ftckpt/ftckpt/vmm"
	"github.com/ftckpt/ftckpt/vmm/vmmtest"
	"github.com/ftckpt/ftckpt/witness"
)

// The multi-process test re-executes this test binary as a primary or a
// backup process (TestMain dispatches on roleEnv). They share a directory
// holding the witness's lease file and the disk image, talk over real TCP,
// and serve a real UDP client: the test process. It stays beside
// modes/node/nodetest's pair of nodes in one process: a process killed
// with SIGKILL is a crash no harness in one process makes (nothing of it
// runs after, the kernel closes its sockets, its writes stay in the page
// cache).
const (
	roleEnv   = "FTCKPT_CKPT_TEST_ROLE" // primary or backup
	dirEnv    = "FTCKPT_CKPT_TEST_DIR"
	clientEnv = "FTCKPT_CKPT_TEST_CLIENT" // the client's UDP address
	peerEnv   = "FTCKPT_CKPT_TEST_PEER"   // the backup's TCP address (primary)

	mpPages = 64
	mpSlots = 64
)

func TestMain(m *testing.M) {
	if role := os.Getenv(roleEnv); role != "" {
		if err := runRole(role); err != nil {
			fmt.Printf("error: %v\n", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// mpConfig is the processes' configuration: short epochs, failure noticed
// in half a second.
func mpConfig() Config {
	c := DefaultConfig()
	c.Epoch, c.MinEpoch = 2*time.Millisecond, time.Millisecond
	c.Heartbeat, c.FailureTimeout = 25*time.Millisecond, 500*time.Millisecond
	return c
}

func runRole(role string) error {
	slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})))
	dir, client := os.Getenv(dirEnv), os.Getenv(clientEnv)
	clientAddr, err := net.ResolveUDPAddr("udp", client)
	if err != nil {
		return err
	}
	arb, err := witness.Open("disk:" + filepath.Join(dir, "lease"))
	if err != nil {
		return err
	}
	defer arb.Close()
	fence := witness.NewFence(arb, fmt.Sprintf("%s-%d", role, os.Getpid()))
	disk, err := vmm.OpenFileDisk(filepath.Join(dir, "disk"), false)
	if err != nil {
		return err
	}
	g := newSimGuest(mpPages)
	g.requests = true
	udp, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return err
	}
	switch role {
	case "primary":
		return runPrimaryRole(g, fence, disk, udp, clientAddr)
	case "backup":
		return runBackupRole(g, fence, disk, udp, clientAddr)
	}
	return fmt.Errorf("role %q", role)
}

// serveUDP hands each request "req ID" to the guest, as a NIC would; a
// request the guest cannot take now is lost, as on a network.
func serveUDP(udp *net.UDPConn, g *simGuest) {
	buf := make([]byte, 64)
	for {
		n, _, err := udp.ReadFromUDP(buf)
		if err != nil {
			return
		}
		var id uint64
		if _, err := fmt.Sscanf(string(buf[:n]), "req %d", &id); err == nil && id != 0 {
			g.deliver(id)
		}
	}
}

// udpSink sends released frames to the client.
type udpSink struct {
	udp *net.UDPConn
	to  *net.UDPAddr
}

func (s udpSink) SendFrame(f []byte) error {
	_, err := s.udp.WriteToUDP(f, s.to)
	return err
}

func runPrimaryRole(g *simGuest, fence *witness.Fence, disk *vmm.FileDisk, udp *net.UDPConn, client *net.UDPAddr) error {
	ctx := context.Background()
	if _, err := fence.Acquire(ctx, 1); err != nil {
		return err
	}
	var primary *Primary
	held := NewHeldDisk(disk, func() uint64 { return primary.Position() })
	out, err := outbuf.New(outbuf.DefaultConfig(), outbuf.Env{Generation: 1, Fence: fence, Net: udpSink{udp, client}, Disk: held.Sink(), Clock: outbuf.SystemClock{}})
	if err != nil {
		return err
	}
	held.Attach(out)
	held.SetPoll(g.poke)
	if primary, err = NewPrimary(mpConfig(), g, out, fence, 1, nil); err != nil {
		return err
	}
	primary.SetDisk(held)
	holdCounts(g, out, primary.Position, nil)
	g.disk = held
	conn, err := net.Dial("tcp", os.Getenv(peerEnv))
	if err != nil {
		return err
	}
	if err := g.Start(); err != nil {
		return err
	}
	go serveUDP(udp, g)
	fmt.Printf("ready %s\n", udp.LocalAddr())
	err = primary.Run(ctx, conn)
	return fmt.Errorf("primary stopped: %w (guest: %v)", err, g.Err())
}

func runBackupRole(g *simGuest, fence *witness.Fence, disk *vmm.FileDisk, udp *net.UDPConn, client *net.UDPAddr) error {
	ctx := context.Background()
	b, err := NewBackup(mpConfig(), g, fence, nil)
	if err != nil {
		return err
	}
	b.SetDisk(disk)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	fmt.Printf("listening %s\n", ln.Addr())
	conn, err := ln.Accept()
	if err != nil {
		return err
	}
	err = b.Receive(ctx, conn)
	slog.Warn("primary lost", "err", err)
	// Live, this host is unprotected: outputs leave at once.
	g.disk = disk
	g.emit = func(n, id uint64) error { return udpSink{udp, client}.SendFrame(frame(n, id)) }
	if _, err := b.GoLive(ctx); err != nil {
		return err
	}
	go serveUDP(udp, g)
	fmt.Printf("live %s\n", udp.LocalAddr())
	<-g.Stopped()
	return fmt.Errorf("guest stopped: %w", g.Err())
}

// child is a role process and what it says.
type child struct {
	cmd    *exec.Cmd
	lines  chan string
	stderr *vmmtest.Console
}

func startChild(t *testing.T, role string, env ...string) *child {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), append([]string{roleEnv + "=" + role}, env...)...)
	c := &child{cmd: cmd, lines: make(chan string, 16), stderr: &vmmtest.Console{}}
	cmd.Stderr = c.stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		s := bufio.NewScanner(out)
		for s.Scan() {
			c.lines <- s.Text()
		}
		close(c.lines)
	}()
	t.Cleanup(func() { c.kill() })
	return c
}

// expect waits for the child's next line, which must start with prefix,
// and returns the rest.
func (c *child) expect(t *testing.T, prefix string) string {
	t.Helper()
	select {
	case l, ok := <-c.lines:
		if !ok || !strings.HasPrefix(l, prefix+" ") {
			t.Fatalf("%s said %q, want %q (stderr:\n%s)", c.cmd.Args[0], l, prefix, c.stderr)
		}
		return strings.TrimPrefix(l, prefix+" ")
	case <-time.After(vmmtest.Bound): // bounds a hung child only
		t.Fatalf("child never said %q (stderr:\n%s)", prefix, c.stderr)
	}
	return ""
}

// kill is kill -9, then reaping.
func (c *child) kill() {
	if c.cmd.ProcessState == nil {
		c.cmd.Process.Kill()
		c.cmd.Wait()
	}
}

// reply is one datagram the client received.
type reply struct {
	n, id uint64
	from  string
}

// udpClient sends numbered requests to the live server and records the
// replies, in arrival order.
type udpClient struct {
	conn    *net.UDPConn
	target  atomic.Pointer[net.UDPAddr]
	mu      sync.Mutex
	replies []reply
	bad     []string
	sent    atomic.Uint64
}

func newUDPClient(t *testing.T) *udpClient {
	conn, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	conn.SetReadBuffer(4 << 20)
	c := &udpClient{conn: conn}
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { // requests: one a millisecond
		defer wg.Done()
		tick := time.NewTicker(time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-done:
				return
			case <-tick.C:
			}
			if to := c.target.Load(); to != nil {
				id := c.sent.Add(1)
				conn.WriteToUDP(fmt.Appendf(nil, "req %d", id), to)
			}
		}
	}()
	go func() {
		defer wg.Done()
		buf := make([]byte, 128)
		for {
			n, from, err := conn.ReadFromUDP(buf)
			if err != nil {
				return
			}
			r := reply{from: from.String()}
			var perr error
			r.n, r.id, perr = parseFrame(buf[:n])
			c.mu.Lock()
			if perr != nil {
				c.bad = append(c.bad, string(buf[:n]))
			} else {
				c.replies = append(c.replies, r)
			}
			c.mu.Unlock()
		}
	}()
	t.Cleanup(func() { close(done); conn.Close(); wg.Wait() })
	return c
}

func (c *udpClient) snapshot() []reply {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]reply(nil), c.replies...)
}

// waitReplies waits for n replies from addr; a child that says anything
// meanwhile (its error, as it ends) fails the test.
func (c *udpClient) waitReplies(t *testing.T, addr string, n int, children ...*child) {
	t.Helper()
	vmmtest.WaitUntil(t, fmt.Sprintf("%d replies from %s", n, addr), func() bool {
		for _, ch := range children {
			select {
			case l, ok := <-ch.lines:
				t.Fatalf("child said %q (open %v) while serving (stderr:\n%s)", l, ok, ch.stderr)
			default:
			}
		}
		count := 0
		for _, r := range c.snapshot() {
			if r.from == addr {
				count++
			}
		}
		return count >= n
	})
}

// TestProcessesKilledAtRandomMoments runs a primary and a backup as real
// processes over real TCP, with a real UDP client sending requests, and
// kill -9s the primary at 20 random moments. Each time the backup must go
// live, the client's view must be that of one machine (each reply answers
// a request the client sent, no reply is repeated, none the primary
// released is missing, the backup's continue after them), the guest must
// never read back less than it wrote, and the disk must hold every record
// the client was told of.
func TestProcessesKilledAtRandomMoments(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: runs 40 processes")
	}
	seed := time.Now().UnixNano()
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewSource(seed))
	for i := range 20 {
		after, pause := 1+rng.Intn(150), time.Duration(rng.Intn(20))*time.Millisecond
		t.Run(fmt.Sprint(i), func(t *testing.T) {
			t.Parallel()
			killPrimaryOnce(t, after, pause)
		})
	}
}

func killPrimaryOnce(t *testing.T, after int, pause time.Duration) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "disk"), make([]byte, mpSlots*recordSize), 0o644); err != nil {
		t.Fatal(err)
	}
	client := newUDPClient(t)
	env := []string{dirEnv + "=" + dir, clientEnv + "=" + client.conn.LocalAddr().String()}
	backup := startChild(t, "backup", env...)
	peer := backup.expect(t, "listening")
	primary := startChild(t, "primary", append(env, peerEnv+"="+peer)...)
	pAddr := primary.expect(t, "ready")
	client.target.Store(mustUDPAddr(t, pAddr))

	client.waitReplies(t, pAddr, after, primary, backup)
	time.Sleep(pause) // a random moment to kill at: the test's point
	primary.kill()
	bAddr := backup.expect(t, "live")
	client.target.Store(mustUDPAddr(t, bAddr))
	client.waitReplies(t, bAddr, 30, backup)
	backup.kill()

	got := client.snapshot()
	checkReplies(t, got, pAddr, bAddr, client.sent.Load())
	img, err := os.ReadFile(filepath.Join(dir, "disk"))
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range got {
		m, id, ok := parseRecord(img[r.n%mpSlots*recordSize:])
		if !ok || m < r.n || m%mpSlots != r.n%mpSlots || (m == r.n && id != r.id) {
			t.Fatalf("the client was told step %d answered request %d, but its slot holds record %d of request %d (valid %v)", r.n, r.id, m, id, ok)
		}
	}
	for _, c := range []*child{primary, backup} {
		if s := c.stderr.String(); strings.Contains(s, "DATA RACE") {
			t.Fatalf("race in a child:\n%s", s)
		}
	}
	last := got[len(got)-1]
	t.Logf("%d replies; primary killed after %d (+%v); backup answered from step %d to %d",
		len(got), after, pause, firstFrom(got, bAddr), last.n)
}

func mustUDPAddr(t *testing.T, s string) *net.UDPAddr {
	a, err := net.ResolveUDPAddr("udp", s)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func firstFrom(rs []reply, addr string) uint64 {
	for _, r := range rs {
		if r.from == addr {
			return r.n
		}
	}
	return 0
}

// checkReplies checks the client's view: the primary's replies, then the
// backup's, steps strictly consecutive within each (nothing released is
// lost or repeated), the backup's after the primary's, every id one the
// client sent, none answered twice.
func checkReplies(t *testing.T, rs []reply, pAddr, bAddr string, sent uint64) {
	t.Helper()
	ids := map[uint64]bool{}
	for i, r := range rs {
		switch {
		case r.from != pAddr && r.from != bAddr:
			t.Fatalf("reply %d from %s, neither server", i, r.from)
		case r.id == 0 || r.id > sent:
			t.Fatalf("reply %d answers request %d, never sent", i, r.id)
		case ids[r.id]:
			t.Fatalf("request %d answered twice (reply %d, step %d)", r.id, i, r.n)
		}
		ids[r.id] = true
		if i == 0 {
			continue
		}
		prev := rs[i-1]
		switch {
		case r.from != prev.from:
			if prev.from != pAddr || r.from != bAddr {
				t.Fatalf("reply %d from %s after %s", i, r.from, prev.from)
			}
			if r.n <= prev.n {
				t.Fatalf("after failover the backup answered step %d, the primary had answered %d: repeated", r.n, prev.n)
			}
		case r.n != prev.n+1:
			t.Fatalf("%s answered step %d after %d: a released reply is missing or repeated", r.from, r.n, prev.n)
		}
	}
	if len(rs) == 0 || rs[0].from != pAddr || rs[len(rs)-1].from != bAddr {
		t.Fatal("the client did not hear from the primary and then the backup")
	}
}
