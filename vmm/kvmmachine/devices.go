package kvmmachine

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc64"

	"github.com/ftckpt/ftckpt/vmm/machine"

	"github.com/ftckpt/ftckpt/vmm"
)

// The device hooks of a Stepper: every source of non-determinism of its
// devices is its Env.
//
// Outputs are never refused. An Env output call blocks while the output
// buffer is full (back-pressure), so the hooks never return
// vmm.ErrOutputFull, which would make the device leave the request in its
// ring and retry it at a point the backup could not reproduce. An error
// from the Env (vmm.ErrOutputFull included) is fatal: the hook keeps it in
// kvmFault and hands the device errEnvFailed, which the device treats as a
// failed request (a dropped frame, IOERR); the Stepper method that ran
// the device returns the Env's error, and every later call fails with it.
// A blocked output call holds its device's lock (vmm's hooks are called
// under it): harmless here, as only the engine's goroutine uses the devices.

// errEnvFailed is what a device hook answers when the Env failed.
var errEnvFailed = errors.New("the replay Env failed; the machine stops")

// kvmFault holds the first Env error a device hook met.
type kvmFault struct{ err error }

// note keeps err (if it is the first) and returns what the device sees.
func (f *kvmFault) note(what string, err error) error {
	if err == nil {
		return nil
	}
	if f.err == nil {
		f.err = fmt.Errorf("%s: %w", what, err)
	}
	return errEnvFailed
}

// kvmDisk is virtio-blk's disk: the Env's.
type kvmDisk struct {
	env   machine.Env
	size  int64
	fault *kvmFault
}

func (d *kvmDisk) ReadAt(p []byte, off int64) (int, error) {
	if err := d.fault.note("reading the disk", d.env.ReadDisk(p, off)); err != nil {
		return 0, err
	}
	return len(p), nil
}

func (d *kvmDisk) WriteAt(p []byte, off int64) (int, error) {
	if err := d.fault.note("writing the disk", d.env.WriteDisk(p, off)); err != nil {
		return 0, err
	}
	return len(p), nil
}

// Flush does nothing: the Env has no flush. Writes are outputs the engine
// holds and releases in order, and makes durable itself.
func (d *kvmDisk) Flush() error { return d.env.FlushDisk() }

func (d *kvmDisk) Size() int64 { return d.size }

// kvmSink is virtio-net's frame sink: the Env's.
type kvmSink struct {
	env   machine.Env
	fault *kvmFault
}

func (s kvmSink) SendFrame(frame []byte) error {
	return s.fault.note("sending a frame", s.env.SendFrame(frame))
}

// kvmConsole is the serial port's console: the Env's.
type kvmConsole struct{ env machine.Env }

func (c kvmConsole) Write(p []byte) (int, error) {
	c.env.Console(p)
	return len(p), nil
}

var kvmCRC = crc64.MakeTable(crc64.ECMA)

// kvmDirtyHash hashes (page number, contents) of every page of ram set in
// dirty for which skip is false, in page order (CRC-64/ECMA over
// little-endian page numbers and the pages). A nil skip skips none.
func kvmDirtyHash(ram []byte, dirty *machine.Bitmap, skip func(page uint64) bool) uint64 {
	var h uint64
	var pfn [8]byte
	for r := range dirty.Runs() {
		for p := r.First; p < r.First+r.Count; p++ {
			if skip != nil && skip(p) {
				continue
			}
			binary.LittleEndian.PutUint64(pfn[:], p)
			h = crc64.Update(h, kvmCRC, pfn[:])
			h = crc64.Update(h, kvmCRC, ram[p*vmm.PageSize:(p+1)*vmm.PageSize])
		}
	}
	return h
}
