// Package vmmtest is the test support several packages share: the skip
// where /dev/kvm cannot be opened, a serial console to wait on, the
// in-memory disk (MemDisk), and waiting on a condition instead of sleeping
// (WaitUntil). It does not import vmm, so vmm's own tests can use it.
package vmmtest

import (
	"bytes"
	"os"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"
)

// RequireKVMEnv names the environment variable that turns RequireKVM's
// skip into a failure: CI and the emulated machine of make test-kvm set it,
// so that a KVM test that cannot run is never counted as passed.
const RequireKVMEnv = "FTCKPT_REQUIRE_KVM"

// RequireKVM skips the test where /dev/kvm cannot be opened, or fails it if
// FTCKPT_REQUIRE_KVM=1. A test (not a benchmark) that needs KVM has KVM in
// its name: make test-kvm selects the tests it runs in the emulated machine
// with -run KVM, so a test named otherwise would never run there.
func RequireKVM(t testing.TB) {
	t.Helper()
	if _, isTest := t.(*testing.T); isTest && !strings.Contains(t.Name(), "KVM") {
		t.Fatalf("%s needs KVM but has no KVM in its name: make test-kvm would never run it", t.Name())
	}
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err != nil {
		if os.Getenv(RequireKVMEnv) == "1" {
			t.Fatalf("needs /dev/kvm, which cannot be opened here (%v), and %s=1 forbids skipping", err, RequireKVMEnv)
		}
		t.Skipf("needs /dev/kvm, which cannot be opened here: %v (make test-kvm runs KVM tests in an emulated machine)", err)
	}
	f.Close()
}

// Machine is what WaitFor watches: a *vmm.Machine.
type Machine interface {
	Stopped() <-chan struct{}
	Wait() (uint8, error)
}

// Console is a serial console safe for the vCPU thread to write while a
// test reads it (or any output written while a test reads it: a child
// process's).
type Console struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

// Write implements io.Writer.
func (c *Console) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.buf.Write(p)
}

// String returns everything written so far.
func (c *Console) String() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.buf.String()
}

// WaitFor polls the console until re matches and returns the submatches; it
// fails the test if m stops first. The deadline only bounds a broken guest:
// it decides nothing.
func (c *Console) WaitFor(t testing.TB, m Machine, re *regexp.Regexp) []string {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		if s := re.FindStringSubmatch(c.String()); s != nil {
			return s
		}
		select {
		case <-m.Stopped():
			// The guest may have printed the line and stopped since the
			// last look: the console is final now, so look once more.
			if s := re.FindStringSubmatch(c.String()); s != nil {
				return s
			}
			_, err := m.Wait()
			t.Fatalf("machine stopped (%v) before the console matched %v:\n%s", err, re, c.String())
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("console never matched %v:\n%s", re, c.String())
		}
	}
}
