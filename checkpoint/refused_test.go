package checkpoint

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"
)

// TestALPNNamesTheVersion: the TLS handshake refuses exactly the peers
// the frame header would.
func TestALPNNamesTheVersion(t *testing.T) {
	if want := fmt.Sprintf("ftckpt/%d", ProtocolVersion); ALPN != want {
		t.Fatalf("ALPN %q, want %q", ALPN, want)
	}
}

// TestRefusalIsAnError: a Refused message reaches the reader as an error
// naming the reason, never as a message; an older reader, which knows
// neither the type nor the version, refuses it by version.
func TestRefusalIsAnError(t *testing.T) {
	var b bytes.Buffer
	if err := WriteRefusal(&b, "this host requires mutual TLS"); err != nil {
		t.Fatal(err)
	}
	typ, p, err := NewReader(bytes.NewReader(b.Bytes()), 0).Next()
	if !errors.Is(err, ErrPeerRefused) || !strings.Contains(err.Error(), `"this host requires mutual TLS"`) || typ != 0 || p != nil {
		t.Fatalf("Next = %v, %q, %v; want the refusal as an error", typ, p, err)
	}
	if v, ok := SniffFrame(b.Bytes()); !ok || v != ProtocolVersion {
		t.Errorf("SniffFrame(refusal) = %d, %v", v, ok)
	}
	// A version-2 reader checks the version first.
	old := b.Bytes()
	if v := uint16(old[4]) | uint16(old[5])<<8; v != ProtocolVersion {
		t.Fatalf("a refusal carries version %d", v)
	}
	long := strings.Repeat("x", MaxRefusal+100)
	b.Reset()
	WriteRefusal(&b, long)
	if _, _, err := NewReader(bytes.NewReader(b.Bytes()), 0).Next(); !errors.Is(err, ErrPeerRefused) {
		t.Errorf("a long refusal: %v", err)
	}
	if _, _, err := NewReader(bytes.NewReader(frame(MaxRefusal+1, ProtocolVersion, MsgRefused, nil)), 0).Next(); !errors.Is(err, ErrMessageTooLarge) {
		t.Errorf("a refusal over the bound: %v", err)
	}
}

// TestHelloFromAnOlderPeer: a peer of protocol version 5 (hashes not
// named by the sync that asked) is refused at the Hello with both
// versions named.
func TestHelloFromAnOlderPeer(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	h := Hello{Role: RolePrimary, MemPages: 8, Machine: "m"}.Append(nil)
	go NewReader(a, 0).Next() // our hello
	go a.Write(frame(uint32(len(h)), 5, MsgHello, h))
	_, err := NewLink(b, 0, nil).Hello(Hello{Role: RoleBackup, MemPages: 8, Machine: "m"}, 5*time.Second)
	if !errors.Is(err, ErrProtocolVersion) || !strings.Contains(err.Error(), "the peer speaks version 5, this build 6") {
		t.Fatalf("Hello with an older peer: %v", err)
	}
}

func TestSniffFrame(t *testing.T) {
	h := Hello{Role: RolePrimary, MemPages: 8, Machine: "checkpoint mode"}.Append(nil)
	for _, tc := range []struct {
		name string
		b    []byte
		v    uint16
		ok   bool
	}{
		{"hello v2", frame(uint32(len(h)), 2, MsgHello, h), 2, true},
		{"hello v3", frame(uint32(len(h)), 3, MsgHello, h), 3, true},
		{"short", frame(uint32(len(h)), 3, MsgHello, h)[:7], 0, false},
		{"ack", frame(16, 3, MsgAck, nil), 0, false},
		{"TLS client hello", []byte{0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc}, 0, false},
		{"HTTP", []byte("POST /v1/acquire HTTP/1.1"), 0, false},
		{"hello of absurd length", frame(1<<20, 3, MsgHello, nil), 0, false},
	} {
		if v, ok := SniffFrame(tc.b); ok != tc.ok || ok && v != tc.v {
			t.Errorf("%s: SniffFrame = %d, %v; want %d, %v", tc.name, v, ok, tc.v, tc.ok)
		}
	}
}

// TestWriteMessageOneWriteOffTCP: to a writer that is not a TCP
// connection (TLS) a small message goes in one Write, so in one record.
func TestWriteMessageOneWriteOffTCP(t *testing.T) {
	w := &countingWriter{}
	if err := WriteMessage(w, MsgAck, Ack{1, 2}.Append(nil)); err != nil || w.writes != 1 {
		t.Fatalf("an ack took %d writes (%v)", w.writes, err)
	}
	w.writes = 0
	if err := WriteMessage(w, MsgCheckpoint, make([]byte, 1<<20)); err != nil || w.writes != 2 {
		t.Fatalf("a 1 MiB checkpoint took %d writes (%v), want header and payload", w.writes, err)
	}
}

type countingWriter struct{ writes int }

func (c *countingWriter) Write(p []byte) (int, error) { c.writes++; return len(p), nil }
