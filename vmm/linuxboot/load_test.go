package linuxboot

import (
	"bytes"
	"encoding/binary"
	"errors"
	"reflect"
	"strings"
	"testing"
)

const testCmdline = "console=ttyS0 root=/dev/vda rw"

// expectedZeroPage builds boot_params the way boot.rst and zero-page.rst say it must
// look, from literal offsets: zeros, the image's own setup header, then the fields a
// loader writes.
func expectedZeroPage(img []byte, hdrEnd int, kernel, initrd, initrdSize uint64, e820 []E820Entry) []byte {
	zp := make([]byte, 4096)
	le := binary.LittleEndian
	copy(zp[0x1F1:hdrEnd], img[0x1F1:hdrEnd])
	le.PutUint16(zp[offVidMode:], 0xFFFF)
	zp[offTypeOfLoader] = 0xFF
	zp[offLoadFlags] = img[offLoadFlags] &^ 0x80
	le.PutUint32(zp[offCode32Start:], uint32(kernel))
	le.PutUint32(zp[offRamdiskImage:], uint32(initrd))
	le.PutUint32(zp[offExtRamdiskImg:], uint32(initrd>>32))
	le.PutUint32(zp[offRamdiskSize:], uint32(initrdSize))
	le.PutUint32(zp[offExtRamdiskSz:], uint32(initrdSize>>32))
	le.PutUint16(zp[offHeapEndPtr:], 0)
	le.PutUint32(zp[offCmdLinePtr:], 0x20000)
	zp[offE820Entries] = byte(len(e820))
	for i, e := range e820 {
		o := offE820Table + 20*i
		le.PutUint64(zp[o:], e.Addr)
		le.PutUint64(zp[o+8:], e.Size)
		le.PutUint32(zp[o+16:], uint32(e.Type))
	}
	return zp
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

// TestLoadWritesExactlyTheDocumentedBytes loads a synthetic kernel, initrd and command
// line into a 64 MiB slice and compares the whole of guest memory, byte for byte, with
// memory built independently from boot.rst: so every structure is at its offset and
// nothing else was written.
func TestLoadWritesExactlyTheDocumentedBytes(t *testing.T) {
	s := defaultSpec()
	img := s.build()
	initrd := bytes.Repeat([]byte{0xA5, 0x5A, 0x11}, 0x5001/3+1)[:0x5001]
	mem := make(sliceMem, 64*mib)
	e, err := Load(mem, Config{Kernel: img, Initrd: initrd, Cmdline: testCmdline, MemSize: 64 * mib})
	if err != nil {
		t.Fatal(err)
	}

	const kernelAt = 0x1000000       // pref_address: it fits
	const initrdAt = 64*mib - 0x6000 // highest page-aligned start for 0x5001 bytes
	wantE820 := []E820Entry{{0, 0x9FC00, E820RAM}, {0x9FC00, 0x60400, E820Reserved}, {0x100000, 63 * mib, E820RAM}}
	want := make([]byte, 64*mib)
	copy(want[0x500:], []byte{
		0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
		0xFF, 0xFF, 0, 0, 0, 0x9B, 0xAF, 0x00, // __BOOT_CS
		0xFF, 0xFF, 0, 0, 0, 0x93, 0xCF, 0x00, // __BOOT_DS
	})
	copy(want[0x7000:], expectedZeroPage(img, s.hdrEnd, kernelAt, initrdAt, 0x5001, wantE820))
	copy(want[0x20000:], testCmdline+"\x00")
	copy(want[kernelAt:], img[s.setupSize():])
	copy(want[initrdAt:], initrd)
	if !bytes.Equal(mem, want) {
		i := firstDiff(mem, want)
		t.Fatalf("guest memory differs first at GPA 0x%x: got 0x%02x, want 0x%02x", i, mem[i], want[i])
	}

	wantEntry := Entry{
		RIP: kernelAt + 0x200, RSI: 0x7000, GDTBase: 0x500, GDTLimit: 31,
		CS: bootCode, DS: bootData,
		KernelAddr: kernelAt, KernelSpan: 0x300000,
		InitrdAddr: initrdAt, InitrdSize: 0x5001,
		CmdlineAddr: 0x20000, IdentityMapEnd: kernelAt + 0x300000,
	}
	got := e
	got.GDT, got.E820 = nil, nil
	if !reflect.DeepEqual(got, wantEntry) {
		t.Errorf("Entry\n got %+v\nwant %+v", got, wantEntry)
	}
	if !bytes.Equal(e.GDT, want[0x500:0x520]) || len(e.E820) != 3 || e.E820[2] != wantE820[2] {
		t.Errorf("Entry GDT %x E820 %v", e.GDT, e.E820)
	}
}

// TestBootParamsLayout checks the Go mirror of boot_params against zero-page.rst offsets.
func TestBootParamsLayout(t *testing.T) {
	bp := bootParams{ExtRamdiskImage: 0x11111111, ExtRamdiskSize: 0x22222222, ExtCmdLinePtr: 0x33333333, E820Entries: 0x44}
	bp.Hdr.SetupSects = 0x55
	bp.Hdr.KernelInfoOffset = 0x66666666
	bp.HdrTail[0] = 0x77
	bp.E820Table[0] = E820Entry{0x8888888888888888, 0x9999999999999999, 0xAAAAAAAA}
	bp.E820Table[127] = E820Entry{0xBB, 0xCC, 0xDD}
	b, err := bp.encode()
	if err != nil {
		t.Fatal(err)
	}
	le := binary.LittleEndian
	checks := []struct {
		off  int
		got  uint64
		want uint64
	}{
		{0x0C0, uint64(le.Uint32(b[0x0C0:])), 0x11111111},
		{0x0C4, uint64(le.Uint32(b[0x0C4:])), 0x22222222},
		{0x0C8, uint64(le.Uint32(b[0x0C8:])), 0x33333333},
		{0x1E8, uint64(b[0x1E8]), 0x44},
		{0x1F1, uint64(b[0x1F1]), 0x55},
		{0x268, uint64(le.Uint32(b[0x268:])), 0x66666666},
		{0x26C, uint64(b[0x26C]), 0x77},
		{0x2D0, le.Uint64(b[0x2D0:]), 0x8888888888888888},
		{0x2D8, le.Uint64(b[0x2D8:]), 0x9999999999999999},
		{0x2E0, uint64(le.Uint32(b[0x2E0:])), 0xAAAAAAAA},
		{0x2D0 + 127*20, le.Uint64(b[0x2D0+127*20:]), 0xBB},
		{0x2D0 + 127*20 + 16, uint64(le.Uint32(b[0x2D0+127*20+16:])), 0xDD},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("offset 0x%x holds 0x%x, want 0x%x", c.off, c.got, c.want)
		}
	}
	if b[0xCD0] != 0 || b[0x1EF] != 0 {
		t.Errorf("padding not zero")
	}
}

// load runs Load on a recordMem and returns the entry and what it wrote.
func load(t *testing.T, cfg Config) (Entry, *recordMem) {
	t.Helper()
	m := &recordMem{}
	e, err := Load(m, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return e, m
}

func zeroPage(t *testing.T, m *recordMem) []byte {
	t.Helper()
	zp := m.read(0x7000, 4096)
	if zp == nil {
		t.Fatal("boot_params not written at 0x7000")
	}
	return zp
}

func ramdiskFields(zp []byte) (addr, size uint64) {
	le := binary.LittleEndian
	addr = uint64(le.Uint32(zp[offRamdiskImage:])) | uint64(le.Uint32(zp[offExtRamdiskImg:]))<<32
	size = uint64(le.Uint32(zp[offRamdiskSize:])) | uint64(le.Uint32(zp[offExtRamdiskSz:]))<<32
	return addr, size
}

func TestLoadKernelPlacement(t *testing.T) {
	cases := []struct {
		name     string
		spec     func(*imageSpec)
		mem      uint64
		reserved []E820Entry
		at, span uint64
	}{
		{"pref_address", nil, 64 * mib, nil, 0x1000000, 0x300000},
		{"pref too high: lowest aligned from 1 MiB", nil, 16 * mib, nil, 2 * mib, 0x300000},
		{"pref reserved: lowest aligned that fits", nil, 64 * mib,
			[]E820Entry{{0x1100000, pageSize, E820Reserved}}, 2 * mib, 0x300000},
		{"reserved at 2 MiB too: next aligned", nil, 64 * mib,
			[]E820Entry{{0x1100000, pageSize, E820Reserved}, {0x400000, pageSize, E820Reserved}}, 6 * mib, 0x300000},
		{"pref unaligned: aligned up", func(s *imageSpec) { s.prefAddress = 0x1100000 }, 64 * mib, nil, 0x1200000, 0x300000},
		{"image longer than init_size", func(s *imageSpec) { s.initSize = 0x1000; s.pmSize = 0x2345 }, 64 * mib, nil, 0x1000000, 0x2345},
		{"non-relocatable at pref", func(s *imageSpec) { s.relocatable = 0; s.prefAddress = 0x1400000; s.alignment = 0 }, 64 * mib, nil, 0x1400000, 0x300000},
		{"non-relocatable, no pref: 1 MiB", func(s *imageSpec) { s.relocatable = 0; s.prefAddress = 0 }, 64 * mib, nil, 0x100000, 0x300000},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := defaultSpec()
			if c.spec != nil {
				c.spec(&s)
			}
			img := s.build()
			e, m := load(t, Config{Kernel: img, MemSize: c.mem, Reserved: c.reserved})
			if e.KernelAddr != c.at || e.KernelSpan != c.span || e.RIP != c.at+0x200 {
				t.Fatalf("kernel at 0x%x span 0x%x RIP 0x%x, want 0x%x 0x%x 0x%x", e.KernelAddr, e.KernelSpan, e.RIP, c.at, c.span, c.at+0x200)
			}
			if got := m.read(c.at, len(img)-s.setupSize()); !bytes.Equal(got, img[s.setupSize():]) {
				t.Fatalf("protected-mode kernel not written at 0x%x", c.at)
			}
			if got := binary.LittleEndian.Uint32(zeroPage(t, m)[offCode32Start:]); got != uint32(c.at) {
				t.Errorf("code32_start 0x%x, want 0x%x", got, c.at)
			}
		})
	}
}

func TestLoadInitrdPlacement(t *testing.T) {
	cases := []struct {
		name     string
		spec     func(*imageSpec)
		mem      uint64
		hole     uint64
		reserved []E820Entry
		size     int
		at       uint64
	}{
		{"top of RAM", nil, 64 * mib, 0, nil, 0x5001, 64*mib - 0x6000},
		{"exact pages", nil, 64 * mib, 0, nil, 0x6000, 64*mib - 0x6000},
		{"below initrd_addr_max", func(s *imageSpec) { s.initrdAddrMax = 0x2FFFFFF }, 64 * mib, 0, nil, 0x5001, 48*mib - 0x6000},
		// boot.rst's example: 131072 bytes under 0x37FFFFFF start at 0x37FE0000.
		{"boot.rst example", func(s *imageSpec) { s.initrdAddrMax = 0x37FFFFFF }, 2 * gib, 0, nil, 131072, 0x37FE0000},
		{"unaligned initrd_addr_max", func(s *imageSpec) { s.initrdAddrMax = 0x2FFFFFE }, 64 * mib, 0, nil, 0x1000, 48*mib - 0x2000},
		{"below a reserved top", nil, 64 * mib, 0, []E820Entry{{63 * mib, mib, E820Reserved}}, 0x5001, 63*mib - 0x6000},
		{"no room above the kernel: below it", nil, 19*mib + 0x3000, 0, nil, 0x5000, 16*mib - 0x5000},
		{"right above the kernel", nil, 19*mib + 0x5000, 0, nil, 0x5000, 19 * mib},
		{"4 GiB RAM with hole: under initrd_addr_max", nil, 8 * gib, 3 * gib, nil, 0x5001, 2*gib - 0x6000},
		{"no flag, max above the hole: under the hole", func(s *imageSpec) { s.initrdAddrMax = 0xFFFFFFFF; s.xloadFlags = XLFKernel64 }, 8 * gib, 3 * gib, nil, 0x5001, 3*gib - 0x6000},
		{"above 4 GiB when it fits nowhere below", func(s *imageSpec) { s.initrdAddrMax = 0x1FFFFFF }, 8 * gib, 3 * gib, nil, 20 * mib, 9*gib - 20*mib},
		{"without a hole, above 4 GiB", func(s *imageSpec) { s.initrdAddrMax = 0x1FFFFFF }, 6 * gib, 0, nil, 20 * mib, 6*gib - 20*mib},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := defaultSpec()
			if c.spec != nil {
				c.spec(&s)
			}
			initrd := bytes.Repeat([]byte{0x42}, c.size)
			e, m := load(t, Config{Kernel: s.build(), Initrd: initrd, MemSize: c.mem, PCIHoleStart: c.hole, Reserved: c.reserved})
			if e.InitrdAddr != c.at || e.InitrdSize != uint64(c.size) {
				t.Fatalf("initrd at 0x%x size 0x%x, want 0x%x 0x%x", e.InitrdAddr, e.InitrdSize, c.at, c.size)
			}
			if !bytes.Equal(m.read(c.at, c.size), initrd) {
				t.Fatalf("initrd bytes not at 0x%x", c.at)
			}
			if addr, size := ramdiskFields(zeroPage(t, m)); addr != c.at || size != uint64(c.size) {
				t.Errorf("boot_params ramdisk 0x%x size 0x%x, want 0x%x 0x%x", addr, size, c.at, c.size)
			}
		})
	}
}

func TestLoadWithoutInitrd(t *testing.T) {
	e, m := load(t, Config{Kernel: defaultSpec().build(), MemSize: 64 * mib})
	if e.InitrdAddr != 0 || e.InitrdSize != 0 || len(m.writes) != 4 {
		t.Fatalf("initrd 0x%x/0x%x, %d writes; want none and 4 writes", e.InitrdAddr, e.InitrdSize, len(m.writes))
	}
	if addr, size := ramdiskFields(zeroPage(t, m)); addr != 0 || size != 0 {
		t.Errorf("boot_params ramdisk 0x%x size 0x%x, want zeros", addr, size)
	}
	if c := m.read(0x20000, 1); c == nil || c[0] != 0 {
		t.Errorf("empty command line not written as a NUL at 0x20000: %v", c)
	}
}

func TestLoadCmdlineLimits(t *testing.T) {
	s := defaultSpec()
	img := s.build()
	exact := strings.Repeat("a", int(s.cmdlineSize))
	e, m := load(t, Config{Kernel: img, Cmdline: exact, MemSize: 64 * mib})
	if got := m.read(e.CmdlineAddr, len(exact)+1); string(got) != exact+"\x00" {
		t.Errorf("command line of exactly cmdline_size not written whole with its NUL")
	}
	if p := binary.LittleEndian.Uint32(zeroPage(t, m)[offCmdLinePtr:]); p != 0x20000 {
		t.Errorf("cmd_line_ptr 0x%x", p)
	}
	if p := binary.LittleEndian.Uint32(zeroPage(t, m)[offExtCmdLinePtr:]); p != 0 {
		t.Errorf("ext_cmd_line_ptr 0x%x", p)
	}

	big := defaultSpec()
	big.cmdlineSize = 0xFFFFFFFF // the image may claim anything; low memory still bounds it
	room := strings.Repeat("b", MaxCmdlineRoom-1)
	if _, err := Load(&recordMem{}, Config{Kernel: big.build(), Cmdline: room, MemSize: 64 * mib}); err != nil {
		t.Errorf("command line filling the room: %v", err)
	}
	if _, err := Load(&recordMem{}, Config{Kernel: big.build(), Cmdline: room + "b", MemSize: 64 * mib}); err == nil || !strings.Contains(err.Error(), "below the EBDA") {
		t.Errorf("command line past the room: %v", err)
	}
}

func TestLoadRejects(t *testing.T) {
	img := defaultSpec().build()
	spec := func(f func(s *imageSpec)) []byte {
		s := defaultSpec()
		f(&s)
		return s.build()
	}
	cases := []struct {
		name   string
		cfg    Config
		want   string
		noRoom bool
	}{
		{"truncated image", Config{Kernel: img[:0x240], MemSize: 64 * mib}, "past the", false},
		{"wrong magic", Config{Kernel: spec(func(s *imageSpec) { s.version = 0x0205 }), MemSize: 64 * mib}, "older than 2.12", false},
		{"kernel bigger than memory", Config{Kernel: spec(func(s *imageSpec) { s.initSize = 64 * mib }), MemSize: 64 * mib}, "kernel needs", true},
		{"kernel only fits above 4 GiB, even with the flag",
			Config{Kernel: spec(func(s *imageSpec) { s.initSize = 3 * gib }), MemSize: 8 * gib, PCIHoleStart: 2 * gib}, "kernel needs", true},
		{"non-relocatable, pref beyond memory", Config{Kernel: spec(func(s *imageSpec) { s.relocatable = 0 }), MemSize: 16 * mib}, "non-relocatable", true},
		{"initrd bigger than memory", Config{Kernel: img, Initrd: make([]byte, 61*mib), MemSize: 64 * mib}, "initrd", true},
		{"initrd over initrd_addr_max, no 4G flag",
			Config{Kernel: spec(func(s *imageSpec) { s.initrdAddrMax = 0x1FFFFFF; s.xloadFlags = XLFKernel64 }), Initrd: make([]byte, 20*mib), MemSize: 8 * gib}, "initrd", true},
		{"cmdline longer than cmdline_size", Config{Kernel: img, Cmdline: strings.Repeat("x", 2048), MemSize: 64 * mib}, "cmdline_size allows 2047", false},
		{"cmdline with NUL", Config{Kernel: img, Cmdline: "a\x00b", MemSize: 64 * mib}, "NUL at byte 1", false},
		{"memory below 1 MiB", Config{Kernel: img, MemSize: 512 * kib}, "1 MiB", false},
		{"zero page reserved", Config{Kernel: img, MemSize: 64 * mib, Reserved: []E820Entry{{0x7800, 0x10, E820Reserved}}}, "boot_params", false},
		{"GDT reserved", Config{Kernel: img, MemSize: 64 * mib, Reserved: []E820Entry{{0, 0x1000, E820Reserved}}}, "boot GDT", false},
		{"cmdline reserved", Config{Kernel: img, Cmdline: "quiet", MemSize: 64 * mib, Reserved: []E820Entry{{0x20005, 1, E820NVS}}}, "command line", false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			m := &recordMem{}
			_, err := Load(m, c.cfg)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("Load: %v, want an error containing %q", err, c.want)
			}
			if errors.Is(err, ErrNoRoom) != c.noRoom {
				t.Errorf("errors.Is(err, ErrNoRoom) = %v, want %v", !c.noRoom, c.noRoom)
			}
			if len(m.writes) != 0 {
				t.Errorf("a rejected load wrote %d ranges to guest memory", len(m.writes))
			}
		})
	}
}

func TestLoadReportsWriteFailure(t *testing.T) {
	_, err := Load(failMem{}, Config{Kernel: defaultSpec().build(), MemSize: 64 * mib})
	if err == nil || !strings.Contains(err.Error(), "write boot GDT") || !strings.Contains(err.Error(), "injected failure") {
		t.Fatalf("Load on failing memory: %v", err)
	}
	short := shortMem{}
	if _, err := Load(short, Config{Kernel: defaultSpec().build(), MemSize: 64 * mib}); err == nil || !strings.Contains(err.Error(), "wrote") {
		t.Fatalf("Load on short-writing memory: %v", err)
	}
}

// shortMem reports writing one byte less than asked, without an error.
type shortMem struct{}

func (shortMem) WriteAt(p []byte, _ int64) (int, error) { return len(p) - 1, nil }
