package guests

import (
	"bytes"
	"strconv"
	"sync"
	"sync/atomic"
)

// MemtouchConsole is the memtouch guest's serial console read for
// progress: the pass and the pages dirtied of its last "memtouch: pass P
// dirtied D ..." line. The vCPU thread may write it while others read.
type MemtouchConsole struct {
	mu      sync.Mutex // protects partial
	partial []byte
	pass    atomic.Uint64
	dirtied atomic.Uint64
}

// Write implements io.Writer.
func (c *MemtouchConsole) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.partial = append(c.partial, p...)
	for {
		i := bytes.IndexByte(c.partial, '\n')
		if i < 0 {
			return len(p), nil
		}
		c.line(c.partial[:i])
		c.partial = c.partial[i+1:]
	}
}

func (c *MemtouchConsole) line(l []byte) {
	rest, ok := bytes.CutPrefix(l, []byte("memtouch: pass "))
	if !ok {
		return
	}
	pass, rest, _ := bytes.Cut(rest, []byte(" dirtied "))
	dirtied, _, _ := bytes.Cut(rest, []byte(" "))
	p, perr := strconv.ParseUint(string(pass), 10, 64)
	d, derr := strconv.ParseUint(string(dirtied), 10, 64)
	if perr == nil && derr == nil {
		c.pass.Store(p)
		c.dirtied.Store(d)
	}
}

// Pass is the last pass the guest reported (0: none yet).
func (c *MemtouchConsole) Pass() uint64 { return c.pass.Load() }

// Dirtied is the pages dirtied the guest last reported.
func (c *MemtouchConsole) Dirtied() uint64 { return c.dirtied.Load() }
