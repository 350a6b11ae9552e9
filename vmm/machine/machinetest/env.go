package machinetest

import (
	"bytes"
	"slices"
)

// Env is a deterministic machine.Env for Steppers under test: every Now
// advances guest time by a microsecond (the driver also moves it to the
// timer's deadline while the guest halts), the disk is a byte slice that
// grows as written (unwritten bytes read as zero), flushes do nothing,
// and sent frames and the console are kept. Two machines given the same
// calls get the same answers from two Envs in the same state.
type Env struct {
	now     uint64
	disk    []byte
	sent    [][]byte
	console bytes.Buffer
}

// NewEnv returns an Env at time zero with an empty disk.
func NewEnv() *Env { return &Env{} }

// Clone returns a copy of e that answers as e would from now on.
func (e *Env) Clone() *Env {
	c := &Env{now: e.now, disk: bytes.Clone(e.disk), sent: slices.Clone(e.sent)}
	c.console.Write(e.console.Bytes())
	return c
}

// Printed returns everything the guest wrote to its console.
func (e *Env) Printed() []byte { return e.console.Bytes() }

// Now implements machine.Env.
func (e *Env) Now() uint64 {
	e.now += 1000
	return e.now
}

// ReadDisk implements machine.Env.
func (e *Env) ReadDisk(p []byte, off int64) error {
	clear(p)
	if off < int64(len(e.disk)) {
		copy(p, e.disk[off:])
	}
	return nil
}

// WriteDisk implements machine.Env.
func (e *Env) WriteDisk(p []byte, off int64) error {
	if end := off + int64(len(p)); end > int64(len(e.disk)) {
		e.disk = append(e.disk, make([]byte, end-int64(len(e.disk)))...)
	}
	copy(e.disk[off:], p)
	return nil
}

// FlushDisk implements machine.Env.
func (e *Env) FlushDisk() error { return nil }

// SendFrame implements machine.Env.
func (e *Env) SendFrame(frame []byte) error {
	e.sent = append(e.sent, bytes.Clone(frame))
	return nil
}

// Console implements machine.Env.
func (e *Env) Console(p []byte) { e.console.Write(p) }
