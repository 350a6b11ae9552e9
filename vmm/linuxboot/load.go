package linuxboot

import (
	"errors"
	"fmt"
	"math"
	"strings"
)

// Memory is guest-physical memory as the loader sees it. The vmm's guest memory implements
// it through its tracked write path, so every byte the loader writes is in the dirty set.
// WriteAt must write all of p at gpa or return an error (as io.WriterAt).
type Memory interface {
	WriteAt(p []byte, gpa int64) (int, error)
}

// Config describes the kernel to load and the machine it boots on.
type Config struct {
	Kernel  []byte // the bzImage file
	Initrd  []byte // the initial ramdisk; nil or empty for none
	Cmdline string // the kernel command line, without the NUL
	// MemSize is the number of bytes of guest RAM, laid out as RAMRanges(MemSize,
	// PCIHoleStart) describes.
	MemSize uint64
	// PCIHoleStart, if nonzero, starts the 32-bit PCI hole: no RAM lies in
	// [PCIHoleStart, 4 GiB), and the RAM that would have is placed from 4 GiB up.
	PCIHoleStart uint64
	// Reserved are extra non-RAM ranges for the e820 map, e.g. the LAPIC and IOAPIC
	// pages; they take precedence over RAM they overlap.
	Reserved []E820Entry
}

// Entry is how the vmm must start the vCPU for the 64-bit boot protocol. Precondition for
// entering at RIP: long mode (CR0.PE|PG, CR4.PAE, EFER.LME|LMA) with page tables that
// identity-map at least [0, IdentityMapEnd) — identity-mapping the first 4 GiB always
// suffices: the kernel, boot_params, command line and GDT all lie below 4 GiB —, GDTR = {GDTBase,
// GDTLimit} (the loader has written GDT there), CS = CS, DS = ES = SS = DS, interrupts
// disabled (RFLAGS = 0x2), RSI = boot_params.
type Entry struct {
	RIP uint64 // kernel load address + 0x200 (startup_64)
	RSI uint64 // GPA of boot_params (ZeroPageAddr)

	GDTBase  uint64
	GDTLimit uint16
	GDT      []byte  // the bytes written at GDTBase
	CS, DS   Segment // __BOOT_CS and __BOOT_DS as descriptor caches

	KernelAddr     uint64 // where the protected-mode kernel was loaded
	KernelSpan     uint64 // bytes reserved for it: max(init_size, its length)
	InitrdAddr     uint64 // 0 with no initrd
	InitrdSize     uint64
	CmdlineAddr    uint64
	IdentityMapEnd uint64      // the page tables must identity-map [0, IdentityMapEnd)
	E820           []E820Entry // the memory map written into boot_params
}

// Load places a bzImage, its initrd and command line in guest memory following the 64-bit
// Linux boot protocol, writes boot_params and the boot GDT, and returns how to enter the
// kernel. It writes only the ranges it reports in Entry plus GDTAddr and ZeroPageAddr, and
// only inside usable RAM of the e820 map it builds. On error memory may hold some of
// the writes; the machine must not be started.
func Load(mem Memory, cfg Config) (Entry, error) {
	h, err := ParseHeader(cfg.Kernel)
	if err != nil {
		return Entry{}, fmt.Errorf("load linux: %w", err)
	}
	table, err := BuildE820(cfg.MemSize, cfg.PCIHoleStart, cfg.Reserved)
	if err != nil {
		return Entry{}, fmt.Errorf("load linux: %w", err)
	}
	var ram []E820Entry
	for _, e := range table {
		if e.Type == E820RAM {
			ram = append(ram, e)
		}
	}

	if err := checkCmdline(cfg.Cmdline, h.CmdlineSize); err != nil {
		return Entry{}, fmt.Errorf("load linux: %w", err)
	}
	gdt := bootGDT()
	low := []struct {
		what string
		s    span
	}{
		{"boot GDT", span{GDTAddr, GDTAddr + gdtSize}},
		{"boot_params", span{ZeroPageAddr, ZeroPageAddr + zeroPageSize}},
		{"command line", span{CmdlineAddr, CmdlineAddr + uint64(len(cfg.Cmdline)) + 1}},
	}
	for _, l := range low {
		if !l.s.containedIn(ram) {
			return Entry{}, fmt.Errorf("load linux: %s at [0x%x, 0x%x) is not in usable RAM of the e820 map", l.what, l.s.start, l.s.end)
		}
	}

	above4G := h.XLoadFlags&XLFCanBeLoadedAbove4G != 0
	kernel, err := placeKernel(h, uint64(len(cfg.Kernel)-h.SetupSize), ram)
	if err != nil {
		return Entry{}, fmt.Errorf("load linux: %w", err)
	}
	var initrd span
	if len(cfg.Initrd) > 0 {
		initrd, err = placeInitrd(h, uint64(len(cfg.Initrd)), ram, kernel, above4G)
		if err != nil {
			return Entry{}, fmt.Errorf("load linux: %w", err)
		}
	}

	bp := bootParams{Hdr: h.SetupHeader}
	copy(bp.HdrTail[:], h.Raw[min(len(h.Raw), hdrMinEnd-hdrOffset):])
	bp.Hdr.VidMode = vidModeNormal
	bp.Hdr.TypeOfLoader = typeOfLoaderFF
	// The real-mode setup code, the only user of the heap, does not run under the 64-bit
	// protocol: leave no heap.
	bp.Hdr.LoadFlags &^= CanUseHeap
	bp.Hdr.HeapEndPtr = 0
	bp.Hdr.Code32Start = uint32(kernel.start) // the kernel lies below 4 GiB, so this is exact
	bp.Hdr.CmdLinePtr = CmdlineAddr
	bp.Hdr.RamdiskImage = uint32(initrd.start)
	bp.ExtRamdiskImage = uint32(initrd.start >> 32)
	bp.Hdr.RamdiskSize = uint32(uint64(len(cfg.Initrd)))
	bp.ExtRamdiskSize = uint32(uint64(len(cfg.Initrd)) >> 32)
	bp.E820Entries = uint8(len(table))
	copy(bp.E820Table[:], table)
	zp, err := bp.encode()
	if err != nil {
		return Entry{}, fmt.Errorf("load linux: %w", err)
	}

	writes := []struct {
		what string
		gpa  uint64
		p    []byte
	}{
		{"boot GDT", GDTAddr, gdt},
		{"boot_params", ZeroPageAddr, zp},
		{"command line", CmdlineAddr, append([]byte(cfg.Cmdline), 0)},
		{"kernel", kernel.start, cfg.Kernel[h.SetupSize:]},
		{"initrd", initrd.start, cfg.Initrd},
	}
	for _, w := range writes {
		if len(w.p) == 0 {
			continue
		}
		if err := writeAll(mem, w.p, w.gpa); err != nil {
			return Entry{}, fmt.Errorf("load linux: write %s: %w", w.what, err)
		}
	}

	mapEnd := kernel.end
	for _, l := range low {
		mapEnd = max(mapEnd, l.s.end)
	}
	return Entry{
		RIP:            kernel.start + entry64Offset,
		RSI:            ZeroPageAddr,
		GDTBase:        GDTAddr,
		GDTLimit:       gdtSize - 1,
		GDT:            gdt,
		CS:             bootCode,
		DS:             bootData,
		KernelAddr:     kernel.start,
		KernelSpan:     kernel.end - kernel.start,
		InitrdAddr:     initrd.start,
		InitrdSize:     uint64(len(cfg.Initrd)),
		CmdlineAddr:    CmdlineAddr,
		IdentityMapEnd: mapEnd,
		E820:           table,
	}, nil
}

// checkCmdline rejects a command line the kernel would truncate or misread.
func checkCmdline(c string, cmdlineSize uint32) error {
	if uint64(len(c)) > uint64(cmdlineSize) {
		return fmt.Errorf("command line is %d bytes, the kernel's cmdline_size allows %d", len(c), cmdlineSize)
	}
	if len(c)+1 > MaxCmdlineRoom {
		return fmt.Errorf("command line is %d bytes, the room at 0x%x below the EBDA holds %d with its NUL", len(c), CmdlineAddr, MaxCmdlineRoom)
	}
	if i := strings.IndexByte(c, 0); i >= 0 {
		return fmt.Errorf("command line has a NUL at byte %d: the kernel would cut it there", i)
	}
	return nil
}

// placeKernel chooses where the protected-mode kernel goes. It needs max(init_size, its
// length) bytes of contiguous usable RAM from its runtime start. A non-relocatable kernel
// goes at pref_address (or 1 MiB if that is zero); a relocatable one at pref_address
// aligned up to kernel_alignment if that fits, else at the lowest kernel_alignment-aligned
// address from 1 MiB that fits. It always ends by 4 GiB, even when the kernel could run
// above (XLF_CAN_BE_LOADED_ABOVE_4G): so identity-mapping the first 4 GiB is always enough.
func placeKernel(h Header, length uint64, ram []E820Entry) (span, error) {
	need := max(uint64(h.InitSize), length)
	const limit = fourGiB
	fits := func(start uint64) bool {
		end := start + need
		return start >= MinHighAddr && end > start && end <= limit && (span{start, end}).containedIn(ram)
	}
	pref := h.PrefAddress
	if pref == 0 {
		pref = MinHighAddr
	}
	if h.RelocatableKernel == 0 {
		if !fits(pref) {
			return span{}, fmt.Errorf("non-relocatable kernel needs 0x%x bytes of usable RAM at 0x%x (below 0x%x): %w",
				need, pref, limit, ErrNoRoom)
		}
		return span{pref, pref + need}, nil
	}
	a := uint64(h.KernelAlignment)
	if start, ok := alignUp(pref, a); ok && fits(start) {
		return span{start, start + need}, nil
	}
	if start, ok := lowestFit(ram, need, a, MinHighAddr, limit); ok {
		return span{start, start + need}, nil
	}
	return span{}, fmt.Errorf("kernel needs 0x%x bytes (init_size 0x%x, image 0x%x) of usable RAM aligned to 0x%x from 1 MiB below 0x%x: %w",
		need, h.InitSize, length, a, limit, ErrNoRoom)
}

// placeInitrd puts the initrd as high as possible, page-aligned, from 1 MiB, clear of the
// kernel's span, ending by initrd_addr_max+1 and 4 GiB. Only if it fits nowhere there and
// the kernel sets XLF_CAN_BE_LOADED_ABOVE_4G does it go higher, as high as possible in RAM:
// like QEMU and GRUB, it honours initrd_addr_max whenever it can.
func placeInitrd(h Header, size uint64, ram []E820Entry, kernel span, above4G bool) (span, error) {
	busy := []span{kernel}
	limit := min(uint64(h.InitrdAddrMax)+1, fourGiB)
	if start, ok := highestFit(ram, busy, size, pageSize, MinHighAddr, limit); ok {
		return span{start, start + size}, nil
	}
	if above4G {
		if start, ok := highestFit(ram, busy, size, pageSize, MinHighAddr, math.MaxUint64); ok {
			return span{start, start + size}, nil
		}
		limit = math.MaxUint64
	}
	return span{}, fmt.Errorf("initrd of 0x%x bytes fits nowhere page-aligned in usable RAM in [1 MiB, 0x%x) clear of the kernel at [0x%x, 0x%x): %w",
		size, limit, kernel.start, kernel.end, ErrNoRoom)
}

// ErrNoRoom is wrapped by Load's errors when the kernel or initrd does not fit in RAM.
var ErrNoRoom = errors.New("does not fit in guest memory")

func writeAll(mem Memory, p []byte, gpa uint64) error {
	if gpa > math.MaxInt64 || gpa+uint64(len(p)) > math.MaxInt64 {
		return fmt.Errorf("GPA 0x%x+0x%x is beyond int64", gpa, len(p))
	}
	n, err := mem.WriteAt(p, int64(gpa))
	if err != nil {
		return fmt.Errorf("at GPA 0x%x: %w", gpa, err)
	}
	if n != len(p) {
		return fmt.Errorf("at GPA 0x%x: wrote %d of %d bytes", gpa, n, len(p))
	}
	return nil
}
