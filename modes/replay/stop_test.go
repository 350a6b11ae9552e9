package replay_test

import (
	"context"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/ftckpt/ftckpt/modes/replay"
	"github.com/ftckpt/ftckpt/outbuf"
	"github.com/ftckpt/ftckpt/vmm/machine"
	"github.com/ftckpt/ftckpt/vmm/sim"
	"github.com/ftckpt/ftckpt/vmm/vmmtest"
	"github.com/ftckpt/ftckpt/witness"
)

// spinning is a machine whose guest never exits (the C kv guest polls
// memory): Run returns only when kicked. running closes at the first Run.
type spinning struct {
	*sim.Machine
	kicks   chan struct{}
	running chan struct{}
	once    sync.Once
}

func (s *spinning) Kick() {
	select {
	case s.kicks <- struct{}{}:
	default:
	}
}

func (s *spinning) Run() (machine.Exit, error) {
	s.once.Do(func() { close(s.running) })
	<-s.kicks
	return machine.Exit{Kind: machine.ExitKicked}, nil
}

// TestPrimaryStopsWhileTheGuestSpins: the end of Run's context stops a
// primary whose guest runs without exits. It once waited in Run for an exit
// that never came, so a local run ignored SIGTERM.
func TestPrimaryStopsWhileTheGuestSpins(t *testing.T) {
	plug := &replay.Plug{}
	m, err := sim.New("kv", testPages, plug)
	if err != nil {
		t.Fatal(err)
	}
	disk, err := os.Create(filepath.Join(t.TempDir(), "disk"))
	if err != nil {
		t.Fatal(err)
	}
	defer disk.Close()
	if err := disk.Truncate(1 << 20); err != nil {
		t.Fatal(err)
	}
	fence := witness.NewFence(witness.NewMemory(), "primary")
	if _, err := fence.Acquire(context.Background(), 1); err != nil {
		t.Fatal(err)
	}
	out, err := outbuf.New(outbuf.DefaultConfig(), outbuf.Env{Generation: 1, Fence: fence, Net: sinkFunc(func([]byte) error { return nil }), Disk: disk, Clock: outbuf.SystemClock{}})
	if err != nil {
		t.Fatal(err)
	}
	s := &spinning{Machine: m, kicks: make(chan struct{}, 1), running: make(chan struct{})}
	p, err := replay.NewPrimary(testConfig(), s, plug, out, fence, 1, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx, nil) }()
	vmmtest.Closed(t, "the guest to run", s.running)
	cancel()
	vmmtest.Receive(t, "Run to return after its context's end", done)
}
