package linuxboot

import (
	"bytes"
	"encoding/binary"
	"strings"
	"testing"
)

// TestSetupHeaderLayout encodes a SetupHeader whose every field holds a distinct marker
// and checks each marker lands at the offset boot.rst documents.
func TestSetupHeaderLayout(t *testing.T) {
	if got, want := binary.Size(SetupHeader{}), 0x26C-0x1F1; got != want {
		t.Fatalf("SetupHeader encodes to %d bytes, want %d", got, want)
	}
	h := SetupHeader{
		SetupSects: 0x11, RootFlags: 0x2222, Syssize: 0x33333333, RAMSize: 0x4444,
		VidMode: 0x5555, RootDev: 0x6666, BootFlag: 0x7777, Jump: 0x8888,
		Header: 0x99999999, Version: 0xAAAA, RealmodeSwtch: 0xBBBBBBBB, StartSysSeg: 0xCCCC,
		KernelVersion: 0xDDDD, TypeOfLoader: 0xEE, LoadFlags: 0x1F, SetupMoveSize: 0x2121,
		Code32Start: 0x23232323, RamdiskImage: 0x24242424, RamdiskSize: 0x25252525,
		BootsectKludge: 0x26262626, HeapEndPtr: 0x2727, ExtLoaderVer: 0x28, ExtLoaderType: 0x29,
		CmdLinePtr: 0x2A2A2A2A, InitrdAddrMax: 0x2B2B2B2B, KernelAlignment: 0x2C2C2C2C,
		RelocatableKernel: 0x2D, MinAlignment: 0x2E, XLoadFlags: 0x2F2F, CmdlineSize: 0x31313131,
		HardwareSubarch: 0x32323232, HardwareSubarchData: 0x3333333333333333,
		PayloadOffset: 0x34343434, PayloadLength: 0x35353535, SetupData: 0x3636363636363636,
		PrefAddress: 0x3737373737373737, InitSize: 0x38383838, HandoverOffset: 0x39393939,
		KernelInfoOffset: 0x3A3A3A3A,
	}
	var b bytes.Buffer
	if err := binary.Write(&b, binary.LittleEndian, h); err != nil {
		t.Fatal(err)
	}
	enc := b.Bytes()
	fields := []struct {
		off  int
		size int
		want uint64
	}{
		{0x1F1, 1, 0x11}, {0x1F2, 2, 0x2222}, {0x1F4, 4, 0x33333333}, {0x1F8, 2, 0x4444},
		{0x1FA, 2, 0x5555}, {0x1FC, 2, 0x6666}, {0x1FE, 2, 0x7777}, {0x200, 2, 0x8888},
		{0x202, 4, 0x99999999}, {0x206, 2, 0xAAAA}, {0x208, 4, 0xBBBBBBBB}, {0x20C, 2, 0xCCCC},
		{0x20E, 2, 0xDDDD}, {0x210, 1, 0xEE}, {0x211, 1, 0x1F}, {0x212, 2, 0x2121},
		{0x214, 4, 0x23232323}, {0x218, 4, 0x24242424}, {0x21C, 4, 0x25252525},
		{0x220, 4, 0x26262626}, {0x224, 2, 0x2727}, {0x226, 1, 0x28}, {0x227, 1, 0x29},
		{0x228, 4, 0x2A2A2A2A}, {0x22C, 4, 0x2B2B2B2B}, {0x230, 4, 0x2C2C2C2C},
		{0x234, 1, 0x2D}, {0x235, 1, 0x2E}, {0x236, 2, 0x2F2F}, {0x238, 4, 0x31313131},
		{0x23C, 4, 0x32323232}, {0x240, 8, 0x3333333333333333}, {0x248, 4, 0x34343434},
		{0x24C, 4, 0x35353535}, {0x250, 8, 0x3636363636363636}, {0x258, 8, 0x3737373737373737},
		{0x260, 4, 0x38383838}, {0x264, 4, 0x39393939}, {0x268, 4, 0x3A3A3A3A},
	}
	for _, f := range fields {
		if got := readLE(enc[f.off-0x1F1:], f.size); got != f.want {
			t.Errorf("field at 0x%x/%d encodes 0x%x, want 0x%x", f.off, f.size, got, f.want)
		}
	}
}

func readLE(b []byte, size int) uint64 {
	var v uint64
	for i := size - 1; i >= 0; i-- {
		v = v<<8 | uint64(b[i])
	}
	return v
}

func TestParseHeaderReadsFields(t *testing.T) {
	s := defaultSpec()
	img := s.build()
	h, err := ParseHeader(img)
	if err != nil {
		t.Fatal(err)
	}
	if h.Version != s.version || h.LoadFlags != s.loadFlags || h.XLoadFlags != s.xloadFlags ||
		h.RelocatableKernel != s.relocatable || h.KernelAlignment != s.alignment ||
		h.PrefAddress != s.prefAddress || h.InitSize != s.initSize ||
		h.InitrdAddrMax != s.initrdAddrMax || h.CmdlineSize != s.cmdlineSize {
		t.Errorf("parsed %+v, built from %+v", h.SetupHeader, s)
	}
	if h.End != 0x26C || h.SetupSize != 28*512 {
		t.Errorf("End 0x%x SetupSize %d, want 0x26c and %d", h.End, h.SetupSize, 28*512)
	}
	if !bytes.Equal(h.Raw, img[0x1F1:0x26C]) {
		t.Errorf("Raw is not the image's header bytes")
	}
}

func TestParseHeaderSetupSectsZeroMeansFour(t *testing.T) {
	s := defaultSpec()
	s.setupSects = 0
	h, err := ParseHeader(s.build())
	if err != nil {
		t.Fatal(err)
	}
	if h.SetupSize != 5*512 {
		t.Errorf("SetupSize %d, want %d", h.SetupSize, 5*512)
	}
}

// TestParseHeaderProtocol212: a 3.8-era kernel's header ends at 0x268, before
// kernel_info_offset; it is accepted, and the missing field reads as zero, not as the
// setup code that follows the header.
func TestParseHeaderProtocol212(t *testing.T) {
	s := defaultSpec()
	s.version, s.hdrEnd = 0x020C, 0x268
	img := s.build()
	h, err := ParseHeader(img)
	if err != nil {
		t.Fatal(err)
	}
	if h.KernelInfoOffset != 0 || len(h.Raw) != 0x268-0x1F1 {
		t.Errorf("kernel_info_offset 0x%x, raw %d bytes; want 0 and %d", h.KernelInfoOffset, len(h.Raw), 0x268-0x1F1)
	}
	mem := make(sliceMem, 64*mib)
	if _, err := Load(mem, Config{Kernel: img, MemSize: 64 * mib}); err != nil {
		t.Fatal(err)
	}
	want := expectedZeroPage(img, 0x268, 0x1000000, 0, 0, []E820Entry{{0, 0x9FC00, E820RAM}, {0x9FC00, 0x60400, E820Reserved}, {0x100000, 63 * mib, E820RAM}})
	if zp := mem[0x7000:0x8000]; !bytes.Equal(zp, want) {
		i := firstDiff(zp, want)
		t.Fatalf("boot_params differs at 0x%x: 0x%02x, want 0x%02x", i, zp[i], want[i])
	}
}

// TestParseHeaderLongerHeader: a future kernel's header that is longer than this package
// knows is kept whole, and the fields past 0x26C are not decoded from setup code.
func TestParseHeaderLongerHeader(t *testing.T) {
	s := defaultSpec()
	s.hdrEnd = 0x280
	img := s.build()
	h, err := ParseHeader(img)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(h.Raw, img[0x1F1:0x280]) {
		t.Errorf("Raw is %d bytes, want the %d of the header", len(h.Raw), 0x280-0x1F1)
	}
}

func TestParseHeaderRejects(t *testing.T) {
	valid := defaultSpec().build()
	mut := func(f func(b []byte)) []byte {
		b := bytes.Clone(valid)
		f(b)
		return b
	}
	spec := func(f func(s *imageSpec)) []byte {
		s := defaultSpec()
		f(&s)
		return s.build()
	}
	cases := []struct {
		name  string
		image []byte
		want  string
	}{
		{"empty", nil, "too short"},
		{"truncated in header", valid[:0x200], "too short"},
		{"header end past image", valid[:0x250], "past the"},
		{"no boot flag", mut(func(b []byte) { b[0x1FE] = 0 }), "boot_flag"},
		{"wrong magic", mut(func(b []byte) { b[0x202] = 'X' }), "HdrS"},
		{"protocol 2.06", spec(func(s *imageSpec) { s.version = 0x0206 }), "older than 2.12"},
		{"protocol 2.11", spec(func(s *imageSpec) { s.version = 0x020B }), "older than 2.12"},
		{"header too short for 2.15", spec(func(s *imageSpec) { s.hdrEnd = 0x268 }), "header ends at 0x268"},
		{"header too short for 2.12", spec(func(s *imageSpec) { s.hdrEnd = 0x264; s.version = 0x020C }), "header ends at 0x264"},
		{"header too long", mut(func(b []byte) { b[0x201] = 0x90 }), "header ends at 0x292"},
		{"zImage", spec(func(s *imageSpec) { s.loadFlags = 0 }), "LOADED_HIGH"},
		{"32-bit only", spec(func(s *imageSpec) { s.xloadFlags = XLFCanBeLoadedAbove4G }), "XLF_KERNEL_64"},
		{"no protected-mode code", valid[:28*512], "no protected-mode kernel"},
		{"alignment zero", spec(func(s *imageSpec) { s.alignment = 0 }), "kernel_alignment"},
		{"alignment not power of two", spec(func(s *imageSpec) { s.alignment = 0x300000 }), "kernel_alignment"},
		{"alignment below a page", spec(func(s *imageSpec) { s.alignment = 0x800 }), "kernel_alignment"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := ParseHeader(c.image)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("ParseHeader: %v, want an error containing %q", err, c.want)
			}
		})
	}
}

// TestParseHeaderEveryTruncation cuts a valid image at every length up to past the
// setup: each must be rejected without panicking until the protected-mode part begins.
func TestParseHeaderEveryTruncation(t *testing.T) {
	s := defaultSpec()
	img := s.build()
	for n := 0; n <= s.setupSize()+1; n++ {
		_, err := ParseHeader(img[:n])
		if ok := n > s.setupSize(); (err == nil) != ok {
			t.Fatalf("length %d: err %v, want success=%v", n, err, ok)
		}
	}
}

// FuzzParseHeader: no input may panic, and whatever is accepted satisfies the checks the
// loader relies on.
func FuzzParseHeader(f *testing.F) {
	f.Add(defaultSpec().build())
	s := defaultSpec()
	s.setupSects, s.pmSize = 0, 1
	f.Add(s.build())
	f.Add([]byte{})
	f.Add(make([]byte, 0x300))
	f.Fuzz(func(t *testing.T, img []byte) {
		h, err := ParseHeader(img)
		if err != nil {
			return
		}
		if h.End > len(img) || h.End < 0x268 || (h.Version >= 0x020F && h.End < 0x26C) || h.End > 0x290 || len(h.Raw) != h.End-0x1F1 {
			t.Fatalf("accepted header end 0x%x, raw %d bytes, image %d", h.End, len(h.Raw), len(img))
		}
		if h.SetupSize >= len(img) || h.SetupSize < 5*512 {
			t.Fatalf("accepted setup size %d for image of %d", h.SetupSize, len(img))
		}
		if h.BootFlag != 0xAA55 || h.Header != 0x53726448 || h.Version < 0x020C ||
			h.LoadFlags&LoadedHigh == 0 || h.XLoadFlags&XLFKernel64 == 0 {
			t.Fatalf("accepted %+v", h.SetupHeader)
		}
		if h.RelocatableKernel != 0 && (h.KernelAlignment < 4096 || h.KernelAlignment&(h.KernelAlignment-1) != 0) {
			t.Fatalf("accepted alignment 0x%x", h.KernelAlignment)
		}
	})
}
