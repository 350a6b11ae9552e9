package kvmmachine

import (
	"bytes"
	"errors"
	"math/rand"
	"slices"
	"strings"
	"testing"

	"github.com/ftckpt/ftckpt/dirtylog"
	"github.com/ftckpt/ftckpt/vmm"
	"github.com/ftckpt/ftckpt/vmm/machine"
)

func TestKVMConfig(t *testing.T) {
	env := &kvmTestEnv{t: t}
	for _, c := range []struct {
		cfg  StepperConfig
		env  machine.Env
		want string
	}{
		{StepperConfig{Guest: "tick"}, nil, "needs an Env"},
		{StepperConfig{Guest: "nosuch"}, env, `unknown guest "nosuch" (have: counter`},
		{StepperConfig{Guest: "tick", MemSize: 4 << 30}, env, "at most 3072 MiB"},
		{StepperConfig{Guest: "tick", MemSize: 17 << 20}, env, "not a multiple of 2 MiB"},
		{StepperConfig{Guest: "tick", MemSize: 8 << 20}, env, "below the minimum"},
		{StepperConfig{Guest: "disk", DiskSize: 1000}, env, "not a multiple of 512"},
		{StepperConfig{Guest: "disk", DiskSize: -512}, env, "not a multiple of 512"},
	} {
		c.cfg.Track = trackBitmap
		if _, err := NewStepper(c.cfg, c.env); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: %v, want %q", c.cfg, err, c.want)
		}
	}
	if _, err := NewStepper(StepperConfig{Guest: "tick"}, env); err == nil || !strings.Contains(err.Error(), "needs a dirty-page tracker") {
		t.Errorf("no Track: %v", err)
	}
}

// trackBitmap is StepperConfig.Track as ftckpt sets it: KVM's dirty bitmap.
func trackBitmap(m *vmm.Machine) (Tracker, error) { return dirtylog.New(m, dirtylog.ModeBitmap) }

// failingEnv is an Env whose disk and network fail with err.
type failingEnv struct {
	kvmTestEnv
	err error
}

func (e *failingEnv) ReadDisk([]byte, int64) error  { return e.err }
func (e *failingEnv) WriteDisk([]byte, int64) error { return e.err }
func (e *failingEnv) SendFrame([]byte) error        { return e.err }

// TestKVMDeviceHooks: the devices' hooks pass through to the Env, and an
// Env error reaches the device as a plain failure, never as
// vmm.ErrOutputFull (which would make it retry at a point the backup
// cannot reproduce), while the first one is kept for the machine.
func TestKVMDeviceHooks(t *testing.T) {
	env := &kvmTestEnv{t: t, disk: make([]byte, 4096)}
	var fault kvmFault
	disk := &kvmDisk{env, 4096, &fault}
	sink := kvmSink{env, &fault}
	if n, err := disk.WriteAt([]byte("abc"), 100); n != 3 || err != nil {
		t.Fatalf("write: %d, %v", n, err)
	}
	p := make([]byte, 5)
	if n, err := disk.ReadAt(p, 99); n != 5 || err != nil || string(p) != "\x00abc\x00" {
		t.Fatalf("read: %d, %v, %q", n, err, p)
	}
	if err := sink.SendFrame([]byte("frame")); err != nil || len(env.frames) != 1 || string(env.frames[0]) != "frame" {
		t.Fatalf("send: %v, %q", err, env.frames)
	}
	if disk.Flush() != nil || disk.Size() != 4096 || fault.err != nil {
		t.Fatal("flush, size or a fault")
	}
	kvmConsole{env}.Write([]byte("hi"))
	if env.console.String() != "hi" {
		t.Fatalf("console %q", env.console.String())
	}

	for _, envErr := range []error{vmm.ErrOutputFull, errors.New("link down")} {
		var fault kvmFault
		bad := &failingEnv{err: envErr}
		disk, sink := &kvmDisk{bad, 4096, &fault}, kvmSink{bad, &fault}
		_, werr := disk.WriteAt([]byte("x"), 0)
		_, rerr := disk.ReadAt(p, 0)
		serr := sink.SendFrame([]byte("f"))
		for _, err := range []error{werr, rerr, serr} {
			if err == nil || errors.Is(err, vmm.ErrOutputFull) {
				t.Errorf("env error %v reached the device as %v", envErr, err)
			}
		}
		if !errors.Is(fault.err, envErr) || !strings.Contains(fault.err.Error(), "writing the disk") {
			t.Errorf("kept %v, want the first error (the write's), wrapping %v", fault.err, envErr)
		}
	}
}

func TestKVMDirtyHash(t *testing.T) {
	const pages = 200
	r := rand.New(rand.NewSource(1))
	ram := make([]byte, pages*vmm.PageSize)
	r.Read(ram)
	dirty := machine.NewBitmap(pages)
	for _, p := range []uint64{0, 3, 64, 65, 130, 199} {
		dirty.Set(p)
	}
	h := kvmDirtyHash(ram, dirty, nil)
	if h != kvmDirtyHash(bytes.Clone(ram), dirty, nil) {
		t.Fatal("equal memory hashed differently")
	}
	// A byte of a clean page does not count; a byte of a dirty one does.
	ram[2*vmm.PageSize+7]++
	if kvmDirtyHash(ram, dirty, nil) != h {
		t.Fatal("a clean page changed the hash")
	}
	for _, p := range []uint64{0, 65, 199} {
		ram[p*vmm.PageSize+uint64(r.Intn(vmm.PageSize))] ^= 1 << r.Intn(8)
		if kvmDirtyHash(ram, dirty, nil) == h {
			t.Fatalf("a bit of dirty page %d did not change the hash", p)
		}
		h = kvmDirtyHash(ram, dirty, nil)
	}
	// The page numbers count: the same contents elsewhere differ.
	same := make([]byte, 4*vmm.PageSize)
	a, b := machine.NewBitmap(4), machine.NewBitmap(4)
	a.Set(1)
	b.Set(2)
	if kvmDirtyHash(same, a, nil) == kvmDirtyHash(same, b, nil) {
		t.Fatal("a zero page at 1 and at 2 hashed alike")
	}
	// One more dirty page, even a zero one, changes it.
	b.Set(1)
	if kvmDirtyHash(same, a, nil) == kvmDirtyHash(same, b, nil) {
		t.Fatal("adding a dirty page did not change the hash")
	}
	// A skipped page does not count, whatever it holds.
	skip := func(pages ...uint64) func(uint64) bool {
		return func(p uint64) bool { return slices.Contains(pages, p) }
	}
	if kvmDirtyHash(same, b, skip(0, 2, 3)) != kvmDirtyHash(same, a, nil) {
		t.Fatal("skipping page 2 of {1, 2} did not hash like {1}")
	}
	same[2*vmm.PageSize] = 9
	if kvmDirtyHash(same, b, skip(2)) != kvmDirtyHash(same, a, skip(2)) {
		t.Fatal("a skipped page's contents changed the hash")
	}
	if kvmDirtyHash(ram, dirty, skip(1, 2, 4, 66, 198)) != h {
		t.Fatal("skipping clean pages changed the hash")
	}
	if kvmDirtyHash(ram, dirty, skip(64)) == h || kvmDirtyHash(ram, dirty, skip(199)) == h {
		t.Fatal("skipping a dirty page did not change the hash")
	}
}
