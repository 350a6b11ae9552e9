package vmmtest

import (
	"runtime"
	"testing"
	"time"
)

// Bound is how long WaitUntil, Receive and Closed wait before they fail the
// test. It only bounds a broken system, which would otherwise hang the
// test: no test passes or fails because a working system was slow. (The
// emulated machine of make test-kvm runs a guest exit in a third of a
// millisecond: generous.) A wait that reaches it logs every goroutine's
// stack (WaitedTooLong).
const Bound = 2 * time.Minute

// WaitUntil returns once cond holds, looking again and again (first at
// once, then at most every few milliseconds); it fails the test naming
// what it waited for if cond does not hold within Bound. cond runs on the
// test's goroutine, so it may fail the test itself.
func WaitUntil(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(Bound)
	for pause := 50 * time.Microsecond; !cond(); pause = min(2*pause, 5*time.Millisecond) {
		if time.Now().After(deadline) {
			WaitedTooLong(t, what)
		}
		time.Sleep(pause) // between looks; decides nothing
	}
}

// Receive returns the next value from ch; it fails the test naming what
// it waited for if none comes within Bound, or if ch closes (use Closed to
// wait for that).
func Receive[T any](t testing.TB, what string, ch <-chan T) T {
	t.Helper()
	timer := time.NewTimer(Bound)
	defer timer.Stop()
	select {
	case v, ok := <-ch:
		if !ok {
			t.Fatalf("waiting for %s: the channel closed", what)
		}
		return v
	case <-timer.C:
		WaitedTooLong(t, what)
	}
	panic("unreachable")
}

// Closed returns once ch is closed (or yields a value); it fails the test
// naming what it waited for if that does not happen within Bound.
func Closed[T any](t testing.TB, what string, ch <-chan T) {
	t.Helper()
	timer := time.NewTimer(Bound)
	defer timer.Stop()
	select {
	case <-ch:
	case <-timer.C:
		WaitedTooLong(t, what)
	}
}

// WaitedTooLong fails the test for a wait for what that reached Bound,
// with every goroutine's stack in its log: such a wait is a hang, rare
// ones show once in a long run, and the stacks say where it hangs.
func WaitedTooLong(t testing.TB, what string) {
	t.Helper()
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	t.Logf("every goroutine as the wait for %s gives up:\n%s", what, buf)
	t.Fatalf("waited %v for %s", Bound, what)
}
