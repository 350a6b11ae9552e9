package vmm

import (
	"fmt"
	"strings"
	"sync"
	"testing"
)

// callLog is what logDevices were asked to do, in order.
type callLog struct {
	mu    sync.Mutex
	calls []string
}

func (l *callLog) add(format string, args ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.calls = append(l.calls, fmt.Sprintf(format, args...))
}

// take returns the calls logged so far and forgets them.
func (l *callLog) take() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	c := l.calls
	l.calls = nil
	return c
}

// logDevice is a Device that logs every call made to it.
type logDevice struct {
	id    string
	log   *callLog
	state []byte
}

var _ Device = (*logDevice)(nil)

func (d *logDevice) ID() string           { return d.id }
func (d *logDevice) StateVersion() uint32 { return 1 }
func (d *logDevice) Quiesce()             { d.log.add("quiesce %s", d.id) }
func (d *logDevice) Wake()                { d.log.add("wake %s", d.id) }
func (d *logDevice) SaveState() ([]byte, error) {
	d.log.add("save %s", d.id)
	return d.state, nil
}
func (d *logDevice) RestoreState(_ uint32, data []byte) error {
	d.log.add("restore %s %s", d.id, data)
	d.state = data
	return nil
}

// TestAttachRefusesWithoutChanging: an ID the machine has, ports another
// device has, and a started machine are refused, naming the device, and
// leave the device list and the ports as they were.
func TestAttachRefusesWithoutChanging(t *testing.T) {
	s, _ := newDeviceStepper(t)
	m := s.m
	log := &callLog{}
	if got := len(m.devices); got != 5 {
		t.Fatalf("the platform attached %d devices, want PIC, PIT, serial, power, clock", got)
	}
	const freePort = 0x2f8
	for _, c := range []struct {
		dev   Device
		ports []pioRange
		says  string
	}{
		{NewSerial("com1", freePort, nil, nil), []pioRange{{freePort, 8, nil}}, "attaching serial/com1: the machine already has a component with this ID"},
		{&logDevice{id: "vcpu/0", log: log}, nil, "attaching vcpu/0: the machine already has"},
		{&logDevice{id: "vm", log: log}, nil, "attaching vm: the machine already has"},
		{&logDevice{id: "uart2", log: log}, []pioRange{{freePort, 8, nil}, {PortCOM1 + 4, 1, nil}}, "attaching uart2: I/O port range [0x3fc, +1) overlaps"},
		{&logDevice{id: "uart2", log: log}, []pioRange{{freePort, 8, nil}, {freePort + 7, 1, nil}}, "attaching uart2: I/O port range [0x2ff, +1) overlaps [0x2f8, +8)"},
	} {
		err := m.attach(c.dev, c.ports...)
		if err == nil || !strings.Contains(err.Error(), c.says) {
			t.Errorf("attach %s: %v, want %q", c.dev.ID(), err, c.says)
		}
	}
	if len(m.devices) != 5 || m.bus.find(freePort) != nil {
		t.Fatalf("refused attaches left %d devices, port %#x claimed: %v", len(m.devices), freePort, m.bus.find(freePort) != nil)
	}
	if err := m.attach(&logDevice{id: "uart2", log: log}, pioRange{freePort, 8, nil}); err != nil {
		t.Fatal(err)
	}
	m.state = stateRunning
	if err := m.attach(&logDevice{id: "late", log: log}); err == nil || !strings.Contains(err.Error(), "attaching late: machine is running") {
		t.Errorf("attach to a running machine: %v", err)
	}
	m.state = stateCreated
	var ids []string
	for _, c := range m.components() {
		ids = append(ids, c.ID())
	}
	if got := strings.Join(ids, " "); got != "vm vcpu/0 pic pit serial/com1 power clock uart2" {
		t.Errorf("components %s, want the VM, the vCPU, then the devices in attach order", got)
	}
	if calls := log.take(); len(calls) != 0 {
		t.Errorf("attach called the devices: %q", calls)
	}
}
