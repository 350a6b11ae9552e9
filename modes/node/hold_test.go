package node

import (
	"testing"

	"github.com/ftckpt/ftckpt/vmm/machine"
)

// countingRunner is a machine that counts dirty pages; the methods of the
// embedded nil Runner are not called.
type countingRunner struct {
	machine.Runner
	n int
}

func (c countingRunner) DirtySoFar() (int, error) { return c.n, nil }

// The hold between the engine and the machine counts dirty pages where the
// machine does, and fails where it does not, instead of hiding the count
// (the primary would then make its page buffers in the pause).
func TestHoldPassesTheDirtyCount(t *testing.T) {
	wrapped, _ := newHold(countingRunner{n: 42})
	dc, ok := wrapped.(machine.DirtyCounter)
	if !ok {
		t.Fatal("the hold hides the machine's DirtySoFar")
	}
	if n, err := dc.DirtySoFar(); n != 42 || err != nil {
		t.Fatalf("DirtySoFar through the hold: %d, %v; want 42", n, err)
	}
	plain, _ := newHold(struct{ machine.Runner }{})
	if _, err := plain.(machine.DirtyCounter).DirtySoFar(); err == nil {
		t.Fatal("a machine that cannot count counted through the hold")
	}
}
