package witness

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/ftckpt/ftckpt/checkpoint/mtls"
	"github.com/ftckpt/ftckpt/vmm/vmmtest"
)

// refusalLog is a slog handler that keeps the refusals logged (what an
// operator sees), their attributes a line each, so a test can wait for one
// (vmmtest.Lines).
type refusalLog struct{ vmmtest.Lines }

func newRefusalLog() *refusalLog { return &refusalLog{} }

func (l *refusalLog) Enabled(context.Context, slog.Level) bool { return true }
func (l *refusalLog) WithAttrs([]slog.Attr) slog.Handler       { return l }
func (l *refusalLog) WithGroup(string) slog.Handler            { return l }
func (l *refusalLog) Handle(_ context.Context, r slog.Record) error {
	if r.Message != "refused a connection" {
		return nil
	}
	var b strings.Builder
	r.Attrs(func(a slog.Attr) bool { fmt.Fprintf(&b, "%s=%v ", a.Key, a.Value); return true })
	l.Add(b.String())
	return nil
}

// tlsCluster runs a 3-node witness (RunNode: raft-boltdb, raft's network
// transport) whose every connection is mutual TLS with certificates of ca.
type tlsCluster struct {
	addrs []string
	ca    *mtls.CA
	log   *refusalLog
}

func startTLSCluster(t *testing.T) *tlsCluster {
	t.Helper()
	ca, err := mtls.NewCA("witness test CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	c := &tlsCluster{ca: ca, log: newRefusalLog()}
	var list []string
	for i := range 3 {
		list = append(list, fmt.Sprintf("w%d=%s", i, freeClientPort(t)))
	}
	peers, err := ParsePeers(strings.Join(list, ","))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	errs := make(chan error, len(peers))
	for _, p := range peers {
		c.addrs = append(c.addrs, p.Client)
		id := c.identity(t, "127.0.0.1")
		go func() {
			errs <- RunNode(ctx, ServeConfig{ID: p.ID, Bind: p.Client, Peers: peers, DataDir: t.TempDir(),
				Raft: testRaftConfig(), TLS: id, Logger: slog.New(c.log)})
		}()
	}
	t.Cleanup(func() {
		cancel()
		for range peers {
			if err := <-errs; err != nil {
				t.Errorf("RunNode: %v", err)
			}
		}
	})
	// Up: a member can ask it (the nodes listen, a leader is elected).
	if _, err := c.client(t, c.identity(t, "ready")).Current(ctxTimeout(t, 30*time.Second)); err != nil {
		t.Fatalf("the cluster did not come up: %v", err)
	}
	return c
}

func (c *tlsCluster) identity(t *testing.T, host string) *mtls.Identity {
	t.Helper()
	id, err := c.ca.Identity(host)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func (c *tlsCluster) client(t *testing.T, id *mtls.Identity) *RaftClient {
	t.Helper()
	cl, err := NewRaftClient(c.addrs, ClientOptions{RequestTimeout: time.Second, TLS: id,
		Backoff: Backoff{Initial: 5 * time.Millisecond, Max: 50 * time.Millisecond}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cl.Close() })
	return cl
}

// TestTLSRaftContract: the arbiter's contract holds through a cluster
// whose raft and client connections are all mutual TLS.
func TestTLSRaftContract(t *testing.T) {
	c := startTLSCluster(t)
	checkArbiterContract(t, c.client(t, c.identity(t, "primary")))
}

// TestTLSWitnessRefusesStrangers: a stranger with a self-signed
// certificate, with one of another CA, or replaying (whole or cut short) a
// session of a host of the cluster, asks the witness for the lease and
// tries to take part in its raft: every attempt is refused at the
// handshake, and the generation is what it was.
func TestTLSWitnessRefusesStrangers(t *testing.T) {
	c := startTLSCluster(t)
	ctx := ctxTimeout(t, 60*time.Second)
	member := c.client(t, c.identity(t, "primary"))
	if _, err := member.Acquire(ctx, 1, "primary"); err != nil {
		t.Fatal(err)
	}

	// Strangers know the cluster's CA certificate (it is no secret) and
	// trust it; what they lack is a certificate it signed.
	stranger := func(caName, host string) *mtls.Identity {
		ca, err := mtls.NewCA(caName, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		certPEM, keyPEM := mustIssue(t, ca, host)
		id, err := mtls.New(certPEM, keyPEM, append(bytes.Clone(c.ca.CertPEM), ca.CertPEM...), nil)
		if err != nil {
			t.Fatal(err)
		}
		return id
	}
	for _, s := range []struct {
		name string
		id   *mtls.Identity
	}{{"another cluster", stranger("another cluster's CA", "127.0.0.1")}, {"a CA of its own", stranger("stranger", "stranger")}} {
		// Asking for the lease.
		_, err := c.client(t, s.id).Acquire(ctx, 2, "stranger")
		if !errors.Is(err, mtls.ErrRefused) || !strings.Contains(err.Error(), "every witness node refused this host") ||
			!strings.Contains(err.Error(), "unknown certificate authority") {
			t.Errorf("%s: Acquire = %v, want a refusal by every node", s.name, err)
		}
		for _, a := range c.addrs {
			c.log.WaitFor(t, "refusal", "client port "+a, "this cluster's CA (--tls-ca)")
		}
		// Joining raft: dial a node's raft port as a node would.
		raftAddr, _ := raftAddrOf(c.addrs[0])
		_, err = mtls.Dial(ctx, raftAddr, mtls.DialOptions{Identity: s.id, Proto: RaftALPN, Confirm: true})
		if !errors.Is(err, mtls.ErrRefused) || !strings.Contains(err.Error(), "unknown certificate authority") {
			t.Errorf("%s: dialling raft: %v, want a refusal", s.name, err)
		}
		c.log.WaitFor(t, "refusal", "raft port "+raftAddr, "this cluster's CA (--tls-ca)")
	}

	// Replayed and truncated records: a recording of a member's whole
	// session with a node's client port, sent again.
	rec := recordSession(t, c.addrs[0], c.identity(t, "primary"))
	for _, cut := range []struct {
		name string
		b    []byte
	}{{"replayed", rec}, {"truncated", rec[:len(rec)/3]}, {"cut in the first record", rec[:20]}} {
		conn, err := net.Dial("tcp", c.addrs[0])
		if err != nil {
			t.Fatal(err)
		}
		conn.Write(cut.b)
		conn.(*net.TCPConn).CloseWrite()
		answer, _ := io.ReadAll(conn)
		conn.Close()
		if bytes.Contains(answer, []byte("HTTP/1.1")) {
			t.Errorf("%s: the node answered in HTTP: %q", cut.name, answer)
		}
		c.log.WaitFor(t, "refusal", "client port "+c.addrs[0], "refused at the TLS handshake")
	}

	if cur, err := member.Current(ctx); err != nil || cur != (Claim{1, "primary"}) {
		t.Fatalf("after the strangers: %v, %v; want generation 1 held by primary, unchanged", cur, err)
	}
	if _, err := member.Acquire(ctx, 2, "backup"); err != nil {
		t.Fatalf("a member could not take the next generation: %v", err)
	}
}

// TestTLSWitnessClientOfAnotherVersion: a client speaking another version
// of the client protocol is refused at the handshake (ALPN).
func TestTLSWitnessClientOfAnotherVersion(t *testing.T) {
	c := startTLSCluster(t)
	ctx := ctxTimeout(t, 30*time.Second)
	_, err := mtls.Dial(ctx, c.addrs[0], mtls.DialOptions{Identity: c.identity(t, "primary"), Proto: "ftckpt-witness/2"})
	if err == nil {
		t.Fatal("a client of protocol 2 was accepted")
	}
	c.log.WaitFor(t, "refusal", "client port "+c.addrs[0], "another protocol or version")
}

func mustIssue(t *testing.T, ca *mtls.CA, host string) (certPEM, keyPEM []byte) {
	t.Helper()
	certPEM, keyPEM, err := ca.Issue(host, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return certPEM, keyPEM
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

// recordSession asks addr for the holder as a member and returns every
// byte it sent: what a stranger on the network could capture.
func recordSession(t *testing.T, addr string, id *mtls.Identity) []byte {
	t.Helper()
	raw, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	rec := &recordingConn{Conn: raw}
	conn, err := mtls.Handshake(context.Background(), rec, addr, mtls.DialOptions{Identity: id, Proto: ClientALPN})
	if err != nil {
		t.Fatal(err)
	}
	body := `{"version":1}`
	fmt.Fprintf(conn, "POST /v1/current HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s", addr, len(body), body)
	answer, _ := io.ReadAll(conn)
	conn.Close()
	if !bytes.Contains(answer, []byte(`"version":1`)) { // the holder, or a redirect to the leader
		t.Fatalf("the member's session was answered %q", answer)
	}
	return bytes.Clone(rec.out.Bytes())
}

// TestOpenWithTLS: a raft spec's client speaks TLS with the identity
// given; a disk lease is the same with or without one.
func TestOpenWithTLS(t *testing.T) {
	c := startTLSCluster(t)
	id := c.identity(t, "primary")
	a, err := OpenWith("raft://"+strings.Join(c.addrs, ","), OpenOptions{TLS: id})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	if _, err := a.Acquire(ctxTimeout(t, 30*time.Second), 1, "primary"); err != nil {
		t.Fatalf("through OpenWith's TLS client: %v", err)
	}
	// Without TLS the nodes refuse the client: it does not speak TLS.
	plain, err := Open("raft://" + strings.Join(c.addrs, ","))
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	if _, err := plain.Current(ctxTimeout(t, time.Second)); !errors.Is(err, ErrUnreachable) {
		t.Errorf("a plain client of a TLS witness: %v", err)
	}
	c.log.WaitFor(t, "refusal", "does not speak TLS")
	lease := t.TempDir() + "/lease"
	d, err := OpenWith("disk:"+lease, OpenOptions{TLS: id})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	checkArbiterContract(t, d)
}
