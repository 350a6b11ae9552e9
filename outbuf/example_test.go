package outbuf_test

import (
	"context"
	"fmt"
	"os"

	"github.com/ftckpt/ftckpt/outbuf"
)

type printNet struct{}

func (printNet) SendFrame(f []byte) error { fmt.Printf("sent %q\n", f); return nil }

type fence struct{ current uint64 }

func (f fence) Check(gen uint64) error {
	if gen != f.current {
		return fmt.Errorf("generation %d is not current (%d is)", gen, f.current)
	}
	return nil
}

// A checkpoint-mode primary holds epoch 3's outputs until the backup acks
// epoch 3. The guest reads its own held write back before it reaches disk.
func Example() {
	disk, err := os.CreateTemp("", "disk")
	if err != nil {
		panic(err)
	}
	defer os.Remove(disk.Name())
	b, err := outbuf.New(outbuf.DefaultConfig(), outbuf.Env{
		Generation: 1, Fence: fence{current: 1}, Net: printNet{}, Disk: disk, Clock: outbuf.SystemClock{},
	})
	if err != nil {
		panic(err)
	}
	ctx := context.Background()
	_ = b.Hold(ctx, 3, outbuf.NetFrame([]byte("hello")))
	_ = b.Hold(ctx, 3, outbuf.DiskWrite([]byte("data"), 0))

	p := make([]byte, 4)
	_, _ = b.ReadAt(p, 0)
	fmt.Printf("guest reads %q; held %d\n", p, b.Stats().HeldOutputs)

	if err := b.Commit(3); err != nil { // the backup acked epoch 3
		panic(err)
	}
	_, _ = disk.ReadAt(p, 0)
	fmt.Printf("disk holds %q; held %d\n", p, b.Stats().HeldOutputs)
	// Output:
	// guest reads "data"; held 2
	// sent "hello"
	// disk holds "data"; held 0
}
