package vmm

import (
	"errors"
	"math/rand"
	"runtime"
	"sync/atomic"
	"testing"
)

// fakeKVM plays KVM_RUN against a kickState's word: immediate_exit is read
// once at entry; after that only a signal (sig) gets the guest out. A
// signal sent while the thread is outside KVM_RUN is lost, as the real
// one is (Go's handler consumes it), so entry clears sig.
type fakeKVM struct {
	word *uint32
	sig  atomic.Bool
	// spurious is the chance in 1000, per spin, of an EINTR from some
	// other signal (Go's runtime sends them).
	spurious int
	rnd      *rand.Rand
	// entries counts KVM_RUN calls.
	entries int
}

// run is one KVM_RUN of a guest that never exits by itself.
func (f *fakeKVM) run() (bool, error) {
	f.entries++
	f.sig.Store(false)
	if atomic.LoadUint32(f.word)&immediateExitBit != 0 {
		return true, nil
	}
	for {
		if f.sig.Load() {
			return true, nil
		}
		if f.rnd.Intn(1000) < f.spurious {
			return true, nil
		}
		runtime.Gosched()
	}
}

func (f *fakeKVM) kick(k *kickState) {
	k.kick()
	f.sig.Store(true)
}

func TestKickBeforeEntryStopsAtOnce(t *testing.T) {
	word := windowOn
	k := &kickState{word: &word}
	f := &fakeKVM{word: &word, rnd: rand.New(rand.NewSource(1))}
	f.kick(k) // lands outside KVM_RUN: the signal is lost, immediate_exit is not
	kicked, err := k.enter(f.run)
	if err != nil || !kicked || f.entries != 1 {
		t.Fatalf("kicked=%v err=%v after %d entries; want one entry returning the kick", kicked, err, f.entries)
	}
	if word&windowBit == 0 {
		t.Fatal("the kick cleared request_interrupt_window")
	}
	// Consumed: the next enter runs the guest, which exits by itself.
	kicked, err = k.enter(func() (bool, error) {
		if word&immediateExitBit != 0 {
			t.Fatal("entered with immediate_exit still set after the kick was consumed")
		}
		return false, nil
	})
	if kicked || err != nil {
		t.Fatalf("second enter: kicked=%v err=%v", kicked, err)
	}
}

// TestKickBetweenArmAndEntry lands the kick after the loop cleared
// immediate_exit and read "no kick", right before KVM reads it.
func TestKickBetweenArmAndEntry(t *testing.T) {
	var word uint32
	k := &kickState{word: &word}
	f := &fakeKVM{word: &word, rnd: rand.New(rand.NewSource(2))}
	first := true
	kicked, err := k.enter(func() (bool, error) {
		if first {
			first = false
			f.kick(k)
		}
		return f.run()
	})
	if err != nil || !kicked || f.entries != 1 {
		t.Fatalf("kicked=%v err=%v after %d entries", kicked, err, f.entries)
	}
}

func TestSpuriousEINTRIsAbsorbed(t *testing.T) {
	var word uint32
	k := &kickState{word: &word}
	n := 0
	kicked, err := k.enter(func() (bool, error) {
		n++
		return n < 5, nil // four EINTRs of other signals, then an exit
	})
	if kicked || err != nil || n != 5 {
		t.Fatalf("kicked=%v err=%v after %d runs; want the exit after 5", kicked, err, n)
	}
	boom := errors.New("boom")
	if _, err := k.enter(func() (bool, error) { return false, boom }); err != boom {
		t.Fatalf("error %v, want boom", err)
	}
}

// TestKickRaces kicks a guest that never exits by itself at random moments
// of the loop, from another goroutine, round after round: every round must
// end with the kick. A lost kick hangs the test (no other signal comes to
// rescue it).
func TestKickRaces(t *testing.T) {
	word := windowOn
	k := &kickState{word: &word}
	f := &fakeKVM{word: &word, rnd: rand.New(rand.NewSource(3))}
	const rounds = 5000
	start := make(chan int)
	done := make(chan struct{})
	go func() {
		defer close(done)
		r := rand.New(rand.NewSource(4))
		for range start {
			for i := r.Intn(4); i > 0; i-- {
				runtime.Gosched()
			}
			f.kick(k)
		}
	}()
	for i := 0; i < rounds; i++ {
		start <- i
		kicked, err := k.enter(f.run)
		if err != nil || !kicked {
			t.Fatalf("round %d: kicked=%v err=%v", i, kicked, err)
		}
	}
	close(start)
	<-done
	if word&windowBit == 0 {
		t.Fatal("kicks cleared request_interrupt_window")
	}
	if f.entries < rounds {
		t.Fatalf("%d entries for %d rounds", f.entries, rounds)
	}
}

func TestWindowBit(t *testing.T) {
	word := immediateExitOn
	k := &kickState{word: &word}
	k.setWindow(true)
	if !k.window() || word != immediateExitOn|windowOn {
		t.Fatalf("word %#x after setWindow(true)", word)
	}
	k.setWindow(false)
	if k.window() || word != immediateExitOn {
		t.Fatalf("word %#x after setWindow(false)", word)
	}
}
