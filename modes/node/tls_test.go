package node

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	format "github.com/ftckpt/ftckpt/checkpoint"
	"github.com/ftckpt/ftckpt/checkpoint/mtls"
	"github.com/ftckpt/ftckpt/vmm/vmmtest"
	"github.com/ftckpt/ftckpt/witness"
)

// Strangers against the links of real nodes (the software machine's tick
// guest, a disk-lease witness, mutual TLS on loopback): none gets past the
// handshake, and the nodes' state and the lease stay as they were.

// tlsCluster is a CA, its members' identities, and strangers'.
type tlsCluster struct {
	ca        *mtls.CA
	strangers []stranger
}

// stranger is a peer without a certificate of the cluster: it trusts the
// cluster's CA (whose certificate is no secret), so it is the node that
// refuses it, for its certificate.
type stranger struct {
	name string
	id   *mtls.Identity
	want string // what the node's refusal says
}

func newTLSCluster(t *testing.T) *tlsCluster {
	t.Helper()
	ca, err := mtls.NewCA("node test CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	c := &tlsCluster{ca: ca}
	for _, s := range []struct{ name, caName, host, want string }{
		{"another cluster", "another CA", "127.0.0.1", `is signed by "another CA", not by this cluster's CA`},
		{"self-signed", "stranger", "stranger", `"stranger" is self-signed`},
	} {
		other, err := mtls.NewCA(s.caName, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		certPEM, keyPEM, err := other.Issue(s.host, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		id, err := mtls.New(certPEM, keyPEM, append(bytes.Clone(ca.CertPEM), other.CertPEM...), nil)
		if err != nil {
			t.Fatal(err)
		}
		c.strangers = append(c.strangers, stranger{s.name, id, s.want})
	}
	return c
}

func (c *tlsCluster) member(t *testing.T, name string) *mtls.Identity {
	t.Helper()
	id, err := c.ca.Identity(name)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// eventLog keeps a node's log records, one line each (message and
// attributes), so a test can wait for one (vmmtest.Lines).
type eventLog struct{ vmmtest.Lines }

func newEventLog() *eventLog { return &eventLog{} }

func (l *eventLog) Enabled(context.Context, slog.Level) bool { return true }
func (l *eventLog) WithAttrs(as []slog.Attr) slog.Handler    { return &attrs{l, as} }
func (l *eventLog) WithGroup(string) slog.Handler            { return l }
func (l *eventLog) Handle(_ context.Context, r slog.Record) error {
	l.add(r, nil)
	return nil
}

func (l *eventLog) add(r slog.Record, extra []slog.Attr) {
	var b strings.Builder
	b.WriteString(r.Message)
	for _, a := range extra {
		fmt.Fprintf(&b, " %s=%v", a.Key, a.Value)
	}
	r.Attrs(func(a slog.Attr) bool { fmt.Fprintf(&b, " %s=%v", a.Key, a.Value); return true })
	l.Add(b.String())
}

type attrs struct {
	l  *eventLog
	as []slog.Attr
}

func (a *attrs) Enabled(context.Context, slog.Level) bool { return true }
func (a *attrs) WithAttrs(as []slog.Attr) slog.Handler {
	return &attrs{a.l, append(append([]slog.Attr(nil), a.as...), as...)}
}
func (a *attrs) WithGroup(string) slog.Handler { return a }
func (a *attrs) Handle(_ context.Context, r slog.Record) error {
	a.l.add(r, a.as)
	return nil
}

// tlsOptions are a node of the tick guest on the software machine in mode
// with identity id, its lease in dir.
func tlsOptions(mode Mode, dir string, id *mtls.Identity, log *eventLog) Options {
	o := DefaultOptions()
	o.Mode, o.Machine, o.Guest, o.Memory = mode, MachineSim, "tick", 1<<20
	o.Net, o.Disk = DefaultDevices(MachineSim, "tick")
	o.Arbiter = "disk:" + filepath.Join(dir, "lease")
	o.Checkpoint.Epoch = 5 * time.Millisecond
	o.Checkpoint.Heartbeat, o.Checkpoint.FailureTimeout = 20*time.Millisecond, 10*time.Second
	o.Replay.Heartbeat, o.Replay.FailureTimeout = 100*time.Millisecond, 10*time.Second
	o.StatusEvery, o.TLS, o.Log = 0, id, slog.New(log)
	return o
}

func startNode(t *testing.T, ctx context.Context, o Options) *Node {
	t.Helper()
	n, err := Start(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Wait() })
	return n
}

// recordingConn keeps what is written through it.
type recordingConn struct {
	net.Conn
	out bytes.Buffer
}

func (r *recordingConn) Write(p []byte) (int, error) {
	r.out.Write(p)
	return r.Conn.Write(p)
}

// recordMember is what a member sends when it connects to a node with the
// identity of to and opens with a Hello: what a stranger on the network
// could capture. It is recorded against a listener of its own, so the node
// attacked never saw it.
func recordMember(t *testing.T, member, to *mtls.Identity) []byte {
	t.Helper()
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln := mtls.Listen(inner, mtls.ListenOptions{Identity: to, Proto: format.ALPN, Confirm: true, Log: slog.New(slog.DiscardHandler)})
	defer ln.Close()
	go func() {
		if c, err := ln.Accept(); err == nil {
			io.Copy(io.Discard, c)
			c.Close()
		}
	}()
	raw, err := net.Dial("tcp", inner.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	rec := &recordingConn{Conn: raw}
	c, err := mtls.Handshake(context.Background(), rec, inner.Addr().String(), mtls.DialOptions{Identity: member, Proto: format.ALPN, Confirm: true})
	if err != nil {
		t.Fatal(err)
	}
	format.WriteMessage(c, format.MsgHello, format.Hello{Role: format.RolePrimary, MemPages: 256, Machine: "checkpoint mode on the software machine, 1 vCPU"}.Append(nil))
	c.Close()
	return bytes.Clone(rec.out.Bytes())
}

// attack has every stranger of c, and the replayed and truncated records
// of a member's session, connect to addr; each must be refused at the
// handshake, logged by the node with its reason, and told so.
func attack(t *testing.T, c *tlsCluster, addr string, log *eventLog, on string, target *mtls.Identity) {
	t.Helper()
	for _, s := range c.strangers {
		_, err := mtls.Dial(context.Background(), addr, mtls.DialOptions{Identity: s.id, Proto: format.ALPN, Confirm: true})
		if !errors.Is(err, mtls.ErrRefused) || !strings.Contains(err.Error(), "the peer refused this host (tls: unknown certificate authority)") {
			t.Errorf("%s: the stranger was told %v", s.name, err)
		}
		log.WaitFor(t, "log line", "refused a connection", on, s.want)
	}
	session := recordMember(t, c.member(t, "primary"), target)
	for _, cut := range []struct {
		name string
		b    []byte
		want string
	}{
		{"replayed", session, "did not verify"},
		{"truncated", session[:len(session)/2], "refused at the TLS handshake"},
		{"cut in its first record", session[:40], "truncated"},
	} {
		raw, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		raw.Write(cut.b)
		raw.(*net.TCPConn).CloseWrite()
		io.Copy(io.Discard, raw)
		raw.Close()
		log.WaitFor(t, "log line", "refused a connection", on, cut.want)
	}
}

// TestTLSStrangersCannotFeedABackup: while a checkpoint-mode backup
// follows its primary, strangers connect to it as primaries: every one is
// refused at the handshake, and the backup goes on committing its own
// primary's epochs, of the same generation; the lease is untouched.
func TestTLSStrangersCannotFeedABackup(t *testing.T) {
	c := newTLSCluster(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	dir := t.TempDir()
	blog, plog := newEventLog(), newEventLog()
	bo := tlsOptions(ModeCheckpoint, dir, c.member(t, "backup"), blog)
	bo.Role, bo.Listen = RoleBackup, "127.0.0.1:0"
	addr := make(chan string, 1)
	bo.Ready = func(a string) { addr <- a }
	backup := startNode(t, ctx, bo)
	po := tlsOptions(ModeCheckpoint, dir, c.member(t, "primary"), plog)
	po.Role, po.Peer = RolePrimary, <-addr
	startNode(t, ctx, po)
	committed := func(after uint64) format.Status {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for {
			if b := backup.Parts().CheckpointBackup; b != nil {
				if st := b.Status(); st.State == format.StateCommitted && st.Epoch > after {
					return st
				}
			}
			if time.Now().After(deadline) {
				t.Fatalf("the backup committed no epoch after %d", after)
			}
			time.Sleep(time.Millisecond)
		}
	}
	before := committed(2)

	attack(t, c, po.Peer, blog, "--listen", c.member(t, "backup"))

	after := committed(before.Epoch + 3)
	if after.Generation != before.Generation {
		t.Fatalf("the backup's generation went from %d to %d", before.Generation, after.Generation)
	}
	if blog.Has("primary lost") {
		t.Fatal("a stranger reached the engine: the backup lost a primary")
	}
	if cur := leaseHolder(t, dir); cur.Generation != 1 {
		t.Fatalf("the lease holds %v, want generation 1", cur)
	}
}

// TestTLSStrangersCannotJoin: strangers try to join a replay-mode primary
// running alone (--accept-backups) as its backup: every one is refused, the
// primary stays alone, and then a member joins.
func TestTLSStrangersCannotJoin(t *testing.T) {
	c := newTLSCluster(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	dir := t.TempDir()
	plog, blog := newEventLog(), newEventLog()
	po := tlsOptions(ModeReplay, dir, c.member(t, "primary"), plog)
	po.Role, po.AcceptBackups = RolePrimary, "127.0.0.1:0"
	startNode(t, ctx, po)
	line := plog.WaitFor(t, "log line", "accepting backups")
	accept := line[strings.Index(line, "addr=")+len("addr="):]

	attack(t, c, accept, plog, "--accept-backups", c.member(t, "primary"))
	if plog.Has("a backup attached") || plog.Has("a backup tried to join") {
		t.Fatal("a stranger reached the engine")
	}
	if cur := leaseHolder(t, dir); cur.Generation != 1 {
		t.Fatalf("the lease holds %v, want generation 1", cur)
	}

	bo := tlsOptions(ModeReplay, dir, c.member(t, "backup"), blog)
	bo.Role, bo.Join = RoleBackup, accept
	startNode(t, ctx, bo)
	plog.WaitFor(t, "log line", "a backup attached")
	blog.WaitFor(t, "log line", "full checkpoint applied")
}

// TestTLSPrimaryRefusesAFalseBackup: a primary whose --peer is a stranger
// (another cluster's host posing as its backup) refuses it at the
// handshake and stops, saying why; the stranger is told.
func TestTLSPrimaryRefusesAFalseBackup(t *testing.T) {
	c := newTLSCluster(t)
	for _, s := range c.strangers {
		t.Run(s.name, func(t *testing.T) {
			inner, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			refused := make(chan error, 1)
			ln := mtls.Listen(inner, mtls.ListenOptions{Identity: s.id, Proto: format.ALPN, Confirm: true,
				Log: slog.New(slog.DiscardHandler), Refused: func(_ net.Addr, err error) { refused <- err }})
			defer ln.Close()
			log := newEventLog()
			o := tlsOptions(ModeCheckpoint, t.TempDir(), c.member(t, "primary"), log)
			o.Role, o.Peer = RolePrimary, inner.Addr().String()
			err = Run(context.Background(), o)
			if !errors.Is(err, mtls.ErrRefused) || !strings.Contains(err.Error(), "not signed by this cluster's CA") &&
				!strings.Contains(err.Error(), "not by this cluster's CA") {
				t.Errorf("the primary stopped with %v", err)
			}
			if err := <-refused; !strings.Contains(err.Error(), "the peer refused this host (tls: ") {
				t.Errorf("the stranger was told %v", err)
			}
		})
	}
}

// TestPlainPeerOfAnotherVersion: a peer speaking an older protocol in
// plain TCP (ftckpt before TLS) is refused by a TLS node, which names its
// version; what it is sent back it refuses by version.
func TestPlainPeerOfAnotherVersion(t *testing.T) {
	c := newTLSCluster(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	log := newEventLog()
	bo := tlsOptions(ModeCheckpoint, t.TempDir(), c.member(t, "backup"), log)
	bo.Role, bo.Listen = RoleBackup, "127.0.0.1:0"
	addr := make(chan string, 1)
	bo.Ready = func(a string) { addr <- a }
	startNode(t, ctx, bo)
	conn, err := net.Dial("tcp", <-addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	hello := format.Hello{Role: format.RolePrimary, MemPages: 256, Machine: "m"}.Append(nil)
	frame := append([]byte{byte(len(hello)), 0, 0, 0, 2, 0, byte(format.MsgHello), 0}, hello...)
	conn.Write(frame)
	answer, _ := io.ReadAll(conn)
	log.WaitFor(t, "log line", "refused a connection", "ftckpt protocol version 2 in plain TCP: an ftckpt older than TLS (version 3)")
	if len(answer) < 8 || answer[4] != byte(format.ProtocolVersion) || answer[5] != 0 {
		t.Fatalf("the old peer was answered %q, want a frame of version %d (which it refuses by version)", answer, format.ProtocolVersion)
	}
	if _, _, err := format.NewReader(bytes.NewReader(answer), 0).Next(); !errors.Is(err, format.ErrPeerRefused) {
		t.Fatalf("the answer reads as %v", err)
	}
}

func leaseHolder(t *testing.T, dir string) witness.Claim {
	t.Helper()
	arb, err := witness.Open("disk:" + filepath.Join(dir, "lease"))
	if err != nil {
		t.Fatal(err)
	}
	defer arb.Close()
	cur, err := arb.Current(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return cur
}
