package mtls

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

const proto = "ftckpt-test/1"

// cluster is a CA and its hosts' identities, for tests.
type cluster struct {
	ca *CA
}

func newCluster(t testing.TB, name string) *cluster {
	t.Helper()
	ca, err := NewCA(name, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return &cluster{ca: ca}
}

func (c *cluster) id(t testing.TB, host string, peerNames ...string) *Identity {
	t.Helper()
	id, err := c.ca.Identity(host, peerNames...)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// server is a Listener on loopback whose refusals the test can wait for.
type server struct {
	*Listener
	refused chan error
}

func serve(t testing.TB, o ListenOptions) *server {
	t.Helper()
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &server{refused: make(chan error, 16)}
	o.Refused = func(_ net.Addr, err error) { s.refused <- err }
	o.Log = slog.New(slog.DiscardHandler)
	if o.Proto == "" {
		o.Proto = proto
	}
	s.Listener = Listen(inner, o)
	t.Cleanup(func() { s.Close() })
	return s
}

// nextRefusal waits for the server's next refusal (the bound only
// catches a hang).
func (s *server) nextRefusal(t testing.TB) error {
	t.Helper()
	select {
	case err := <-s.refused:
		return err
	case <-time.After(20 * time.Second):
		t.Fatal("the server refused nothing")
		return nil
	}
}

func dial(s *server, o DialOptions) (net.Conn, error) {
	if o.Proto == "" {
		o.Proto = proto
	}
	return Dial(context.Background(), s.Addr().String(), o)
}

// legit dials s as a host of the cluster, sends mark, and checks that the
// next connection s accepts is that one: nothing a stranger did before got
// through.
func legit(t *testing.T, s *server, id *Identity, confirm bool, mark string) {
	t.Helper()
	c, err := dial(s, DialOptions{Identity: id, Confirm: confirm})
	if err != nil {
		t.Fatalf("a host of the cluster could not connect: %v", err)
	}
	defer c.Close()
	if _, err := c.Write([]byte(mark)); err != nil {
		t.Fatal(err)
	}
	a, err := s.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	got := make([]byte, len(mark))
	if _, err := io.ReadFull(a, got); err != nil || string(got) != mark {
		t.Fatalf("the connection accepted read %q, %v; want the cluster host's %q", got, err, mark)
	}
}

func TestHandshakeBothWays(t *testing.T) {
	c := newCluster(t, "ca")
	for _, confirm := range []bool{false, true} {
		s := serve(t, ListenOptions{Identity: c.id(t, "backup"), Confirm: confirm})
		conn, err := dial(s, DialOptions{Identity: c.id(t, "primary"), Confirm: confirm})
		if err != nil {
			t.Fatal(err)
		}
		a, err := s.Accept()
		if err != nil {
			t.Fatal(err)
		}
		go conn.Write([]byte("ping"))
		buf := make([]byte, 4)
		if _, err := io.ReadFull(a, buf); err != nil || string(buf) != "ping" {
			t.Fatalf("read %q, %v", buf, err)
		}
		go a.Write([]byte("pong"))
		if _, err := io.ReadFull(conn, buf); err != nil || string(buf) != "pong" {
			t.Fatalf("read %q, %v", buf, err)
		}
		// The write side closes alone (replay mode's graceful stop).
		if err := conn.(interface{ CloseWrite() error }).CloseWrite(); err != nil {
			t.Fatal(err)
		}
		if n, err := a.Read(buf); n != 0 || err != io.EOF {
			t.Fatalf("after CloseWrite the peer read %d, %v; want EOF", n, err)
		}
		conn.Close()
		a.Close()
	}
}

// TestRefusals: every stranger is refused at the handshake, on both sides,
// with its reason named, and the listener then accepts the next host of
// the cluster as if nothing had happened.
func TestRefusals(t *testing.T) {
	home, other := newCluster(t, "home CA"), newCluster(t, "other CA")
	// Strangers know the cluster's CA certificate (it is no secret) and
	// trust it; what they lack is a certificate it signed.
	trusting := func(id *Identity) *Identity {
		id.roots.AddCert(home.ca.Cert)
		return id
	}
	selfID := trusting(selfSignedIdentity(t, "stranger"))
	otherID := trusting(other.id(t, "primary"))
	expired := func() *Identity {
		certPEM, keyPEM, err := home.ca.Issue("old", -time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		// Load refuses it; a stranger may use it anyway.
		if _, err := New(certPEM, keyPEM, home.ca.CertPEM, nil); err == nil {
			t.Fatal("an expired certificate was loaded")
		}
		return unchecked(t, certPEM, keyPEM, home.ca.CertPEM)
	}()
	for _, tc := range []struct {
		name       string
		server     *Identity
		client     *Identity
		proto      string
		wantServer string    // in the server's refusal
		wantClient string    // in the client's error
		next       *Identity // a host the server accepts next (nil: the server is the stranger)
	}{
		{name: "self-signed", server: home.id(t, "backup"), client: selfID, next: home.id(t, "primary"),
			wantServer: `certificate "stranger" is self-signed, not signed by this cluster's CA`, wantClient: "the peer refused this host (tls: unknown certificate authority)"},
		{name: "other CA", server: home.id(t, "backup"), client: otherID, next: home.id(t, "primary"),
			wantServer: `certificate "primary" is signed by "other CA", not by this cluster's CA`, wantClient: "the peer refused this host (tls: unknown certificate authority)"},
		{name: "server of another CA", server: other.id(t, "backup"), client: home.id(t, "primary"),
			wantServer: "the peer refused this host", wantClient: `certificate "backup" is signed by "other CA", not by this cluster's CA`},
		{name: "server self-signed", server: selfSignedIdentity(t, "stranger"), client: home.id(t, "primary"),
			wantServer: "the peer refused this host", wantClient: `certificate "stranger" is self-signed`},
		{name: "expired", server: home.id(t, "backup"), client: expired, next: home.id(t, "primary"),
			wantServer: `certificate "old" has expired`, wantClient: "the peer refused this host (tls: expired certificate): this host's certificate has expired"},
		{name: "name not accepted", server: home.id(t, "backup", "primary-a", "primary-b"), client: home.id(t, "primary-c"), next: home.id(t, "primary-b"),
			wantServer: "the peer's certificate is for primary-c, localhost, 127.0.0.1, ::1, none of them a name this host accepts (--peer-name primary-a,primary-b)",
			wantClient: "the peer refused this host (tls: bad certificate)"},
		{name: "server name not accepted", server: home.id(t, "backup-x"), client: home.id(t, "primary", "backup-a"), next: home.id(t, "primary"),
			wantServer: "the peer refused this host", wantClient: "none of them a name this host accepts (--peer-name backup-a)"},
		{name: "another version", server: home.id(t, "backup"), client: home.id(t, "primary"), proto: "ftckpt-test/2", next: home.id(t, "primary"),
			wantServer: "the peer speaks another protocol or version", wantClient: "it speaks another protocol or version"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, confirm := range []bool{true, false} {
				s := serve(t, ListenOptions{Identity: tc.server, Confirm: confirm})
				conn, cerr := dial(s, DialOptions{Identity: tc.client, Confirm: confirm, Proto: tc.proto})
				if cerr == nil && !confirm {
					// Without the admission byte a dialler learns of its
					// refusal at its first read (TLS 1.3).
					_, cerr = conn.Read(make([]byte, 1))
					if cerr != nil {
						cerr = refusal(cerr, nil, nil, "127.0.0.1")
					}
				}
				if conn != nil {
					conn.Close()
				}
				serr := s.nextRefusal(t)
				if !errors.Is(serr, ErrRefused) || !strings.Contains(serr.Error(), tc.wantServer) {
					t.Errorf("confirm %v: the server refused with %q, want %q", confirm, serr, tc.wantServer)
				}
				if cerr == nil || !IsRefusal(cerr) || !strings.Contains(cerr.Error(), tc.wantClient) {
					t.Errorf("confirm %v: the client got %v, want a refusal saying %q", confirm, cerr, tc.wantClient)
				}
				if tc.next != nil {
					legit(t, s, tc.next, confirm, "after "+tc.name)
				}
			}
		})
	}
}

func TestHostnameChecked(t *testing.T) {
	home := newCluster(t, "home CA")
	s := serve(t, ListenOptions{Identity: home.id(t, "10.9.8.7"), Confirm: true})
	// Reach the server under a name its certificate is not for.
	raw, err := net.Dial("tcp", s.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	_, err = Handshake(context.Background(), raw, "10.1.1.1:7100", DialOptions{Identity: home.id(t, "primary"), Proto: proto, Confirm: true})
	if !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), `is for 10.9.8.7, localhost, 127.0.0.1, ::1, not for 10.1.1.1:7100`) {
		t.Fatalf("dialling a host the certificate is not for: %v", err)
	}
	s.nextRefusal(t)
}

// TestPlainAndTLSRefuseEachOther: a TLS host and a plain (--insecure) one
// each refuse the other, saying so.
func TestPlainAndTLSRefuseEachOther(t *testing.T) {
	home := newCluster(t, "home CA")
	// A plain dialler (it speaks first) to a TLS listener.
	s := serve(t, ListenOptions{Identity: home.id(t, "backup"), Confirm: true,
		NotTLS: func(first []byte, c net.Conn) string {
			c.Write([]byte("plain refusal"))
			return "an old friend, in the clear: " + string(first[:5])
		}})
	raw, err := net.Dial("tcp", s.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	raw.Write([]byte("HELLO, in the clear, long enough for a record header"))
	answer, _ := io.ReadAll(raw)
	raw.Close()
	if err := s.nextRefusal(t); !strings.Contains(err.Error(), "an old friend, in the clear: HELLO") {
		t.Errorf("the TLS listener refused a plain peer with %v", err)
	}
	if string(answer) != "plain refusal" {
		t.Errorf("the plain peer read %q, want the listener's answer", answer)
	}
	legit(t, s, home.id(t, "backup"), true, "after plain")

	// A TLS dialler to a plain listener that sniffs.
	p := serve(t, ListenOptions{SniffPlain: true})
	_, err = dial(p, DialOptions{Identity: home.id(t, "primary"), Confirm: true})
	if !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "runs with --insecure") {
		t.Errorf("a TLS dialler to a plain listener: %v", err)
	}
	if err := p.nextRefusal(t); !strings.Contains(err.Error(), "the peer speaks TLS, and this host runs with --insecure") {
		t.Errorf("the plain listener refused a TLS peer with %v", err)
	}
	// A TLS dialler to a plain host that answers in the clear.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err == nil {
			c.Write([]byte("FTCH in the clear...."))
			io.Copy(io.Discard, c)
			c.Close()
		}
	}()
	_, err = Dial(context.Background(), ln.Addr().String(), DialOptions{Identity: home.id(t, "primary"), Proto: proto,
		NotTLS: func(first []byte) string { return "it answered " + string(first[:4]) }})
	if !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "it answered FTCH") {
		t.Errorf("a TLS dialler to a host answering in the clear: %v", err)
	}
}

// recordingConn keeps what is written to it.
type recordingConn struct {
	net.Conn
	mu  sync.Mutex
	out bytes.Buffer
}

func (r *recordingConn) Write(p []byte) (int, error) {
	r.mu.Lock()
	r.out.Write(p)
	r.mu.Unlock()
	return r.Conn.Write(p)
}

func (r *recordingConn) written() []byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	return bytes.Clone(r.out.Bytes())
}

// TestReplayedAndTruncatedRecords: a stranger that captured every byte a
// host of the cluster sent in a whole session (its certificate included)
// sends them again, whole or cut short: refused, and nothing reaches
// Accept.
func TestReplayedAndTruncatedRecords(t *testing.T) {
	home := newCluster(t, "home CA")
	s := serve(t, ListenOptions{Identity: home.id(t, "backup"), Confirm: true})
	raw, err := net.Dial("tcp", s.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	rec := &recordingConn{Conn: raw}
	conn, err := Handshake(context.Background(), rec, s.Addr().String(), DialOptions{Identity: home.id(t, "primary"), Proto: proto, Confirm: true})
	if err != nil {
		t.Fatal(err)
	}
	conn.Write([]byte("the first checkpoint"))
	a, err := s.Accept()
	if err != nil {
		t.Fatal(err)
	}
	io.ReadFull(a, make([]byte, 20))
	a.Close()
	conn.Close()
	session := rec.written()

	for _, tc := range []struct {
		name  string
		bytes []byte
		want  string
	}{
		{"replayed", session, "did not verify"},
		{"truncated in the first record", session[:40], "closed the connection in the TLS handshake (or sent a truncated one)"},
		{"truncated after the first record", session[:len(session)/2], ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := net.Dial("tcp", s.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			c.Write(tc.bytes)
			c.(*net.TCPConn).CloseWrite()
			io.Copy(io.Discard, c) // until the server hangs up
			c.Close()
			err = s.nextRefusal(t)
			if !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("refused with %v, want %q", err, tc.want)
			}
			legit(t, s, home.id(t, "primary"), true, "after "+tc.name)
		})
	}
}

// TestSilentStrangerTimesOut: one that connects and says nothing is
// dropped after the timeout, and does not hold up the hosts behind it.
func TestSilentStrangerTimesOut(t *testing.T) {
	home := newCluster(t, "home CA")
	s := serve(t, ListenOptions{Identity: home.id(t, "backup"), Confirm: true, Timeout: 200 * time.Millisecond})
	silent, err := net.Dial("tcp", s.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	legit(t, s, home.id(t, "primary"), true, "beside a silent stranger")
	if err := s.nextRefusal(t); !strings.Contains(err.Error(), "no TLS handshake within 200ms") {
		t.Errorf("the silent stranger was refused with %v", err)
	}
}

func TestInitDir(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "certs")
	res, err := InitDir(dir, []string{"hosta", "10.0.0.2"})
	if err != nil {
		t.Fatal(err)
	}
	if !res.NewCA || len(res.Made) != 2 || len(res.Kept) != 0 {
		t.Fatalf("first init: %+v", res)
	}
	for name, perm := range map[string]os.FileMode{"ca.key": 0o600, "ca.crt": 0o644, "hosta.key": 0o600, "hosta.crt": 0o644, "10.0.0.2.key": 0o600} {
		st, err := os.Stat(filepath.Join(dir, name))
		if err != nil || st.Mode().Perm() != perm {
			t.Errorf("%s: %v, mode %v; want %v", name, err, st.Mode().Perm(), perm)
		}
	}
	caBefore, _ := os.ReadFile(filepath.Join(dir, "ca.crt"))
	res, err = InitDir(dir, []string{"hosta", "hostc"})
	if err != nil {
		t.Fatal(err)
	}
	if res.NewCA || len(res.Made) != 1 || res.Made[0] != "hostc" || len(res.Kept) != 1 {
		t.Fatalf("second init: %+v", res)
	}
	if caAfter, _ := os.ReadFile(filepath.Join(dir, "ca.crt")); !bytes.Equal(caBefore, caAfter) {
		t.Fatal("a second init replaced the CA")
	}
	// Every host's files make an identity of the cluster, named as asked.
	for host, names := range map[string][]string{"hosta": {"hosta", "localhost", "127.0.0.1", "::1"}, "10.0.0.2": {"10.0.0.2", "localhost", "127.0.0.1", "::1"}, "hostc": {"hostc"}} {
		cert, key := HostFiles(dir, host)
		id, err := Load(Files{Cert: cert, Key: key, CA: filepath.Join(dir, CACertFile)})
		if err != nil {
			t.Fatal(err)
		}
		got := CertNames(id.leaf)
		for _, n := range names {
			if !strings.Contains(strings.Join(got, " "), n) {
				t.Errorf("%s's certificate is for %v, lacking %s", host, got, n)
			}
		}
		if id.leaf.PublicKeyAlgorithm != x509.ECDSA || id.Expires().Before(time.Now().Add(365*24*time.Hour)) {
			t.Errorf("%s: %v key, expires %v", host, id.leaf.PublicKeyAlgorithm, id.Expires())
		}
	}
	if _, err := Load(Files{Cert: "x"}); err == nil || !strings.Contains(err.Error(), "--tls-key, --tls-ca missing") {
		t.Errorf("Load of a certificate alone: %v", err)
	}
	other := filepath.Join(t.TempDir(), "other")
	if _, err := InitDir(other, []string{"hosta"}); err != nil {
		t.Fatal(err)
	}
	cert, key := HostFiles(other, "hosta")
	if _, err := Load(Files{Cert: cert, Key: key, CA: filepath.Join(dir, CACertFile)}); err == nil || !strings.Contains(err.Error(), "does not verify against the CA") {
		t.Errorf("Load of another cluster's certificate: %v", err)
	}
}

// selfSignedIdentity is a stranger's: a certificate for both uses, signed
// by its own key, presented with itself as the CA.
func selfSignedIdentity(t testing.TB, host string) *Identity {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(), Subject: pkix.Name{CommonName: host},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage:    x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		DNSNames:    []string{"localhost"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		BasicConstraintsValid: true, IsCA: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, _ := x509.MarshalPKCS8PrivateKey(key)
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	return unchecked(t, certPEM, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), certPEM)
}

// unchecked is an identity New may refuse (a stranger's: expired,
// self-signed), built without its checks.
func unchecked(t testing.TB, certPEM, keyPEM, caPEM []byte) *Identity {
	t.Helper()
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := pem.Decode(caPEM)
	ca, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca)
	leaf, err := x509.ParseCertificate(cert.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	return &Identity{cert: cert, leaf: leaf, roots: roots}
}

// TestTamperedRecordNeverReachesTheReader: a man in the middle of a
// member's connection, after its handshake, flips one bit of a record:
// the reader gets an error, not the bytes (a checkpoint decoder behind it
// never sees them).
func TestTamperedRecordNeverReachesTheReader(t *testing.T) {
	home := newCluster(t, "home CA")
	s := serve(t, ListenOptions{Identity: home.id(t, "backup"), Confirm: true})
	proxy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer proxy.Close()
	var tamper atomic.Bool
	go func() {
		in, err := proxy.Accept()
		if err != nil {
			return
		}
		out, err := net.Dial("tcp", s.Addr().String())
		if err != nil {
			return
		}
		go io.Copy(in, out)
		buf := make([]byte, 64<<10)
		for {
			n, err := in.Read(buf)
			if n > 0 && tamper.Load() {
				buf[n/2] ^= 0x10
				tamper.Store(false)
			}
			if n > 0 {
				out.Write(buf[:n])
			}
			if err != nil {
				out.Close()
				return
			}
		}
	}()
	c, err := Dial(context.Background(), proxy.Addr().String(), DialOptions{Identity: home.id(t, "primary"), Proto: proto, Confirm: true})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	a, err := s.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	tamper.Store(true)
	if _, err := c.Write(bytes.Repeat([]byte("checkpoint "), 100)); err != nil {
		t.Fatal(err)
	}
	n, err := a.Read(make([]byte, 4096))
	if n != 0 || err == nil || !strings.Contains(err.Error(), "bad record MAC") {
		t.Fatalf("the reader got %d bytes, %v; want none and bad record MAC", n, err)
	}
}
