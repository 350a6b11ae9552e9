package vmm

import (
	"encoding/binary"
	"sync"
	"time"
)

// PowerDevice is the guest's off switch: an OUT to PortPower stops the
// machine with the written byte as its exit status.
type PowerDevice struct {
	onPowerOff func(status uint8)
}

// PIORead implements PIODevice.
func (p *PowerDevice) PIORead(_ uint16, data []byte) {
	for i := range data {
		data[i] = 0
	}
}

// PIOWrite implements PIODevice.
func (p *PowerDevice) PIOWrite(_ uint16, data []byte) { p.onPowerOff(data[0]) }

var _ Device = (*PowerDevice)(nil)

// Quiesce implements Quiescer. Nothing to do: the power device acts only on
// a vCPU's OUT.
func (p *PowerDevice) Quiesce() {}

// Wake implements Quiescer: Quiesce stopped nothing.
func (p *PowerDevice) Wake() {}

// ID implements Component.
func (p *PowerDevice) ID() string { return "power" }

// StateVersion implements Component.
func (p *PowerDevice) StateVersion() uint32 { return 1 }

// SaveState implements Component. The power device has no state: once the
// guest writes it the machine is stopped, and a stopped machine is not saved.
func (p *PowerDevice) SaveState() ([]byte, error) { return []byte{}, nil }

// RestoreState implements Component.
func (p *PowerDevice) RestoreState(version uint32, data []byte) error {
	if err := checkVersion(p.ID(), version, p.StateVersion()); err != nil {
		return err
	}
	return decodePlain(data, &struct{}{})
}

// Clock is the guest's time source: a monotonic nanosecond counter that
// continues across save and restore. Reading PortClockLo latches the counter
// and returns its low 32 bits; PortClockHi returns the latched high 32 bits.
// Guests use it instead of RDTSC, which replay cannot see.
//
// mu protects st and base.
type Clock struct {
	now func() time.Duration // host monotonic time; injected for tests

	mu   sync.Mutex
	base time.Duration // guest time = now() - base
	st   clockState
}

type clockState struct {
	// Now is the guest time when the state was saved.
	Now uint64
	// Latched is the value the last PortClockLo read latched.
	Latched uint64
}

// NewClock returns a clock that starts at zero. now gives host monotonic
// time; nil means the real one.
func NewClock(now func() time.Duration) *Clock {
	if now == nil {
		start := time.Now()
		now = func() time.Duration { return time.Since(start) }
	}
	return &Clock{now: now, base: now()}
}

// Now returns the guest's current time.
func (c *Clock) Now() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return uint64(c.now() - c.base)
}

// PIORead implements PIODevice.
func (c *Clock) PIORead(port uint16, data []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var v uint32
	if port == PortClockLo {
		c.st.Latched = uint64(c.now() - c.base)
		v = uint32(c.st.Latched)
	} else {
		v = uint32(c.st.Latched >> 32)
	}
	var b [4]byte
	binary.LittleEndian.PutUint32(b[:], v)
	copy(data, b[:])
}

// PIOWrite implements PIODevice: the clock ignores writes.
func (c *Clock) PIOWrite(uint16, []byte) {}

var _ Device = (*Clock)(nil)

// Quiesce implements Quiescer. Nothing to do: the clock touches no guest
// memory, raises no interrupt and changes only on a vCPU's read (guest time
// runs on while the machine is paused; SaveState records where it is).
func (c *Clock) Quiesce() {}

// Wake implements Quiescer: Quiesce stopped nothing.
func (c *Clock) Wake() {}

// ID implements Component.
func (c *Clock) ID() string { return "clock" }

// StateVersion implements Component.
func (c *Clock) StateVersion() uint32 { return 1 }

// SaveState implements Component.
func (c *Clock) SaveState() ([]byte, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	st := c.st
	st.Now = uint64(c.now() - c.base)
	return encodePlain(&st)
}

// RestoreState implements Component: guest time continues from the saved
// value, whatever the host's clock says.
func (c *Clock) RestoreState(version uint32, data []byte) error {
	if err := checkVersion(c.ID(), version, c.StateVersion()); err != nil {
		return err
	}
	var st clockState
	if err := decodePlain(data, &st); err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.st = st
	c.base = c.now() - time.Duration(st.Now)
	return nil
}
