package bench

import (
	"bytes"
	"strconv"
	"sync"
	"sync/atomic"
)

// console is a guest's serial console read for progress: the last
// "dirtied D" of memtouch's "memtouch: pass P dirtied D ..." lines. Safe
// for the vCPU thread to write while the bench reads.
type console struct {
	mu      sync.Mutex
	partial []byte
	dirtied atomic.Uint64
}

func (c *console) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.partial = append(c.partial, p...)
	for {
		i := bytes.IndexByte(c.partial, '\n')
		if i < 0 {
			break
		}
		c.line(c.partial[:i])
		c.partial = c.partial[i+1:]
	}
	return len(p), nil
}

func (c *console) line(l []byte) {
	_, rest, ok := bytes.Cut(l, []byte(" dirtied "))
	if !ok || !bytes.HasPrefix(l, []byte("memtouch: pass ")) {
		return
	}
	num, _, _ := bytes.Cut(rest, []byte(" "))
	if n, err := strconv.ParseUint(string(num), 10, 64); err == nil {
		c.dirtied.Store(n)
	}
}
