package main

import (
	"bytes"
	"context"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ftckpt/ftckpt/witness"
)

// witnessCLI runs ftckpt with args under ctx and returns its output.
func witnessCLI(ctx context.Context, args ...string) (string, error) {
	root := newRootCmd()
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs(args)
	err := root.ExecuteContext(ctx)
	return out.String(), err
}

func TestWitnessRejectsBadFlags(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"witness", "--peers", "a=127.0.0.1:7000", "--data-dir", dir}, "--id is required"},
		{[]string{"witness", "--id", "a", "--peers", "a=127.0.0.1:7000"}, "--data-dir is required"},
		{[]string{"witness", "--id", "a", "--data-dir", dir}, "--peers: peers: empty list"},
		{[]string{"witness", "--id", "a", "--data-dir", dir, "--peers", "a:7000"}, "want ID=HOST:PORT"},
		{[]string{"witness", "--id", "a", "--data-dir", dir, "--peers", "a=h:65535"}, "raft uses the next port"},
		{[]string{"witness", "--id", "z", "--data-dir", dir, "--peers", "a=127.0.0.1:7000", "--insecure"}, `"z": not in --peers`},
		{[]string{"witness", "--id", "a", "--data-dir", dir, "--peers", "a=127.0.0.1:7000", "--bind", "nonsense", "--insecure"}, "--bind"},
		{[]string{"witness", "--id", "a", "--data-dir", dir, "--peers", "a=127.0.0.1:7000"}, "no TLS: give --tls-cert, --tls-key and --tls-ca"},
		{[]string{"witness", "--id", "a", "--data-dir", dir, "--peers", "a=127.0.0.1:7000", "--tls-cert", "c.crt"}, "--tls-key, --tls-ca missing"},
		{[]string{"witness", "--id", "a", "--data-dir", dir, "--peers", "a=127.0.0.1:7000", "--tls-cert", "c", "--insecure"}, "--insecure and --tls-*/--peer-name contradict"},
		{[]string{"witness", "status", "--arbiter", "zk://x"}, "unknown kind"},
		{[]string{"witness", "status", "--arbiter", "raft://x", "--insecure"}, "missing port"},
		{[]string{"witness", "status", "--arbiter", "raft://127.0.0.1:7000"}, "or --insecure for plain TCP"},
	} {
		out, err := witnessCLI(context.Background(), tc.args...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ftckpt %s: %v (output %q); want an error containing %q", strings.Join(tc.args, " "), err, out, tc.want)
		}
	}
}

func TestWitnessStatusLeaseFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "lease")
	out, err := witnessCLI(context.Background(), "witness", "status", "--arbiter", "disk:"+path)
	if err != nil || !strings.Contains(out, "generation 0") {
		t.Fatalf("status of a fresh lease: %q, %v", out, err)
	}
	l, err := witness.OpenLeaseFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := l.Acquire(context.Background(), 1, "host-a"); err != nil {
		t.Fatal(err)
	}
	out, err = witnessCLI(context.Background(), "witness", "status", "--arbiter", "disk:"+path)
	if err != nil || out != "generation 1 held by host-a\n" {
		t.Fatalf("status after a win: %q, %v", out, err)
	}
}

// TestWitnessSingleNode runs `ftckpt witness` as a one-node cluster with
// certificates of `ftckpt certs init`, asks it through `ftckpt witness
// status`, and stops it by cancelling its context (what SIGINT does).
func TestWitnessSingleNode(t *testing.T) {
	addr := freeWitnessPort(t)
	tlsArgs := loopbackTLS(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	var out bytes.Buffer
	go func() {
		root := newRootCmd()
		root.SetOut(&out)
		root.SetErr(&out)
		root.SetArgs(append([]string{"witness", "--id", "solo", "--peers", "solo=" + addr, "--data-dir", t.TempDir()}, tlsArgs...))
		done <- root.ExecuteContext(ctx)
	}()
	arb, err := witness.OpenWith("raft://"+addr, witness.OpenOptions{TLS: tlsIdentity(t, tlsArgs)})
	if err != nil {
		t.Fatal(err)
	}
	actx, acancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer acancel()
	go func() {
		// A node that cannot start (a port taken after freeWitnessPort
		// looked) ends the wait at once, with its own error.
		select {
		case err := <-done:
			done <- err
			acancel()
		case <-actx.Done():
		}
	}()
	if _, err := arb.Acquire(actx, 1, "host-a"); err != nil {
		select {
		case werr := <-done:
			t.Fatalf("the witness stopped: %v; output:\n%s", werr, out.String())
		default:
			t.Fatal(err)
		}
	}
	status, err := witnessCLI(context.Background(), append([]string{"witness", "status", "--arbiter", "raft://" + addr}, tlsArgs...)...)
	if err != nil || status != "generation 1 held by host-a\n" {
		t.Fatalf("status: %q, %v", status, err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("witness exited with %v; output:\n%s", err, out.String())
	}
	for _, want := range []string{"witness leader changed", "leader=solo", "witness node stopped"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("log lacks %q:\n%s", want, out.String())
		}
	}
}

// freeWitnessPort returns a loopback port p, below the ephemeral range, with
// p+1 (the raft port) free too: outgoing connections of tests running
// beside this one take ephemeral ports and could land on p+1.
func freeWitnessPort(t *testing.T) string {
	t.Helper()
	for range 1000 {
		addr := freePort(t, "tcp")
		host, port, _ := net.SplitHostPort(addr)
		p, _ := strconv.Atoi(port)
		if ln, err := net.Listen("tcp", net.JoinHostPort(host, strconv.Itoa(p+1))); err == nil {
			ln.Close()
			return addr
		}
	}
	t.Fatal("no pair of free loopback ports")
	return ""
}
