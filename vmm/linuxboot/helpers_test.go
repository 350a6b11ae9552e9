package linuxboot

import (
	"encoding/binary"
	"fmt"
	"slices"
)

// imageSpec describes a synthetic bzImage. Fields are written at their documented offsets
// with encoding/binary.LittleEndian directly, not through SetupHeader, so a layout mistake
// in the package's structs cannot hide in the tests.
type imageSpec struct {
	setupSects    uint8
	hdrEnd        int // 0x202 + byte at 0x201
	version       uint16
	loadFlags     uint8
	xloadFlags    uint16
	relocatable   uint8
	alignment     uint32
	prefAddress   uint64
	initSize      uint32
	initrdAddrMax uint32
	cmdlineSize   uint32
	pmSize        int // protected-mode bytes after the setup sectors
}

// defaultSpec looks like a current x86_64 distribution kernel, scaled down.
func defaultSpec() imageSpec {
	return imageSpec{
		setupSects:    27,
		hdrEnd:        0x26C,
		version:       0x020F,
		loadFlags:     LoadedHigh | CanUseHeap, // CAN_USE_HEAP set so we see the loader clear it
		xloadFlags:    XLFKernel64 | XLFCanBeLoadedAbove4G | 1<<2 | 1<<3 | 1<<4,
		relocatable:   1,
		alignment:     0x200000,
		prefAddress:   0x1000000,
		initSize:      0x300000,
		initrdAddrMax: 0x7FFFFFFF,
		cmdlineSize:   2047,
		pmSize:        0x12345,
	}
}

// Offsets of setup-header fields, as in boot.rst.
const (
	offSetupSects    = 0x1F1
	offRootDev       = 0x1FC
	offBootFlag      = 0x1FE
	offJump          = 0x200
	offHeader        = 0x202
	offVersion       = 0x206
	offKernelVersion = 0x20E
	offTypeOfLoader  = 0x210
	offLoadFlags     = 0x211
	offCode32Start   = 0x214
	offRamdiskImage  = 0x218
	offRamdiskSize   = 0x21C
	offHeapEndPtr    = 0x224
	offCmdLinePtr    = 0x228
	offInitrdAddrMax = 0x22C
	offKernelAlign   = 0x230
	offRelocatable   = 0x234
	offXLoadFlags    = 0x236
	offCmdlineSize   = 0x238
	offPrefAddress   = 0x258
	offInitSize      = 0x260
	offHandover      = 0x264
	offKernelInfo    = 0x268
	offVidMode       = 0x1FA
	offExtRamdiskImg = 0x0C0
	offExtRamdiskSz  = 0x0C4
	offExtCmdLinePtr = 0x0C8
	offE820Entries   = 0x1E8
	offSentinel      = 0x1EF
	offE820Table     = 0x2D0
)

func (s imageSpec) setupSize() int {
	n := int(s.setupSects)
	if n == 0 {
		n = 4
	}
	return (n + 1) * 512
}

func (s imageSpec) build() []byte {
	img := make([]byte, s.setupSize()+s.pmSize)
	le := binary.LittleEndian
	// Every header byte gets a recognisable value first, so the tests can tell copied
	// bytes from written ones.
	for i := 0x1F1; i < len(img) && i < 0x290; i++ {
		img[i] = byte(i*7 + 3)
	}
	img[offSentinel] = 0xFF // a real image has nonzero bytes here; it must not reach boot_params
	img[offSetupSects] = s.setupSects
	le.PutUint16(img[offBootFlag:], 0xAA55)
	img[offJump] = 0xEB
	img[offJump+1] = byte(s.hdrEnd - 0x202)
	le.PutUint32(img[offHeader:], 0x53726448)
	le.PutUint16(img[offVersion:], s.version)
	img[offTypeOfLoader] = 0
	img[offLoadFlags] = s.loadFlags
	le.PutUint32(img[offRamdiskImage:], 0)
	le.PutUint32(img[offRamdiskSize:], 0)
	le.PutUint32(img[offCmdLinePtr:], 0)
	le.PutUint32(img[offInitrdAddrMax:], s.initrdAddrMax)
	le.PutUint32(img[offKernelAlign:], s.alignment)
	img[offRelocatable] = s.relocatable
	le.PutUint16(img[offXLoadFlags:], s.xloadFlags)
	le.PutUint32(img[offCmdlineSize:], s.cmdlineSize)
	le.PutUint64(img[offPrefAddress:], s.prefAddress)
	le.PutUint32(img[offInitSize:], s.initSize)
	// Bytes past the header's end read as the start of the setup code, not header.
	for i := s.hdrEnd; i < 0x290 && i < len(img); i++ {
		img[i] = 0xCC
	}
	for i := s.setupSize(); i < len(img); i++ {
		img[i] = byte(i*13 + 5)
	}
	return img
}

// sliceMem is guest memory backed by one Go slice from GPA 0.
type sliceMem []byte

func (m sliceMem) WriteAt(p []byte, gpa int64) (int, error) {
	if gpa < 0 || gpa > int64(len(m)) || int64(len(p)) > int64(len(m))-gpa {
		return 0, fmt.Errorf("sliceMem: write [0x%x, 0x%x) outside [0, 0x%x)", gpa, gpa+int64(len(p)), len(m))
	}
	return copy(m[gpa:], p), nil
}

// recordMem stores what is written, sparsely, and remembers every write's range: it
// stands for memory far larger than the test could allocate.
type recordMem struct {
	writes []span
	data   map[uint64][]byte // by GPA of the write
}

func (m *recordMem) WriteAt(p []byte, gpa int64) (int, error) {
	if m.data == nil {
		m.data = map[uint64][]byte{}
	}
	m.writes = append(m.writes, span{uint64(gpa), uint64(gpa) + uint64(len(p))})
	m.data[uint64(gpa)] = slices.Clone(p)
	return len(p), nil
}

// read returns n bytes at gpa if one write covered them all.
func (m *recordMem) read(gpa uint64, n int) []byte {
	for start, d := range m.data {
		if gpa >= start && gpa+uint64(n) <= start+uint64(len(d)) {
			return d[gpa-start : gpa-start+uint64(n)]
		}
	}
	return nil
}

// failMem fails every write.
type failMem struct{}

func (failMem) WriteAt([]byte, int64) (int, error) { return 0, fmt.Errorf("injected failure") }

const (
	kib = 1 << 10
	mib = 1 << 20
	gib = 1 << 30
)
