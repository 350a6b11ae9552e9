package linuxboot

import (
	"bytes"
	"encoding/binary"
	"fmt"
)

// Offsets and constants of the setup header, from Documentation/arch/x86/boot.rst.
const (
	hdrOffset      = 0x1F1 // start of struct setup_header in the image and in boot_params
	hdrJumpLenOff  = 0x201 // byte whose value + 0x202 is the end of the header
	hdrMinEnd      = 0x26C // end of kernel_info_offset (2.15+), the last field this package knows
	hdrEnd212      = 0x268 // end of handover_offset, the last field of protocols 2.12–2.14
	hdrMaxEnd      = 0x290 // end of the header's room in boot_params (edd_mbr_sig_buffer follows)
	bootFlagMagic  = 0xAA55
	hdrSMagic      = 0x53726448 // "HdrS"
	sectorSize     = 512
	defaultSetup   = 4 // setup_sects == 0 means 4
	minProtocol    = 0x020C
	entry64Offset  = 0x200 // 64-bit entry: load address + 0x200 (startup_64)
	typeOfLoaderFF = 0xFF  // "undefined" boot loader id
	vidModeNormal  = 0xFFFF
)

// loadflags bits.
const (
	LoadedHigh = 1 << 0 // protected-mode code loads at 0x100000 (bzImage)
	CanUseHeap = 1 << 7 // heap_end_ptr is valid
)

// xloadflags bits (protocol 2.12+).
const (
	XLFKernel64           = 1 << 0 // the 64-bit entry point at load address + 0x200 exists
	XLFCanBeLoadedAbove4G = 1 << 1 // kernel, boot_params, cmdline and ramdisk may lie above 4 GiB
)

// SetupHeader mirrors struct setup_header (arch/x86/include/uapi/asm/bootparam.h), which is
// packed and little-endian; encoding/binary adds no padding, so the Go struct encodes to the
// same 123 bytes, from offset 0x1F1 of the image (and of boot_params) to 0x26C.
type SetupHeader struct {
	SetupSects          uint8  // 0x1F1 size of the real-mode setup in sectors; 0 means 4
	RootFlags           uint16 // 0x1F2
	Syssize             uint32 // 0x1F4 protected-mode code size in 16-byte paragraphs
	RAMSize             uint16 // 0x1F8 obsolete
	VidMode             uint16 // 0x1FA written: 0xFFFF ("normal")
	RootDev             uint16 // 0x1FC
	BootFlag            uint16 // 0x1FE 0xAA55
	Jump                uint16 // 0x200
	Header              uint32 // 0x202 "HdrS"
	Version             uint16 // 0x206 protocol version, major<<8 | minor
	RealmodeSwtch       uint32 // 0x208
	StartSysSeg         uint16 // 0x20C obsolete
	KernelVersion       uint16 // 0x20E
	TypeOfLoader        uint8  // 0x210 written: 0xFF
	LoadFlags           uint8  // 0x211
	SetupMoveSize       uint16 // 0x212
	Code32Start         uint32 // 0x214 written: the load address
	RamdiskImage        uint32 // 0x218 written: initrd GPA, low 32 bits
	RamdiskSize         uint32 // 0x21C written: initrd size, low 32 bits
	BootsectKludge      uint32 // 0x220 obsolete
	HeapEndPtr          uint16 // 0x224
	ExtLoaderVer        uint8  // 0x226
	ExtLoaderType       uint8  // 0x227
	CmdLinePtr          uint32 // 0x228 written: command line GPA, low 32 bits
	InitrdAddrMax       uint32 // 0x22C highest byte address the initrd may occupy
	KernelAlignment     uint32 // 0x230
	RelocatableKernel   uint8  // 0x234
	MinAlignment        uint8  // 0x235
	XLoadFlags          uint16 // 0x236
	CmdlineSize         uint32 // 0x238 maximum command line length, without the NUL
	HardwareSubarch     uint32 // 0x23C
	HardwareSubarchData uint64 // 0x240
	PayloadOffset       uint32 // 0x248
	PayloadLength       uint32 // 0x24C
	SetupData           uint64 // 0x250
	PrefAddress         uint64 // 0x258 preferred load address
	InitSize            uint32 // 0x260 linear memory the kernel needs from its start address
	HandoverOffset      uint32 // 0x264
	KernelInfoOffset    uint32 // 0x268
}

// Header is a parsed, checked bzImage setup header.
type Header struct {
	SetupHeader
	// End is the image offset just past the kernel's setup header (0x202 + byte at 0x201).
	End int
	// SetupSize is the size of the real-mode part (boot sector + setup) in bytes; the
	// protected-mode kernel starts at this image offset.
	SetupSize int
	// Raw is the image's header bytes [0x1F1, End), copied: the loader puts them in
	// boot_params unchanged except for the fields it writes, so fields newer than this
	// package survive.
	Raw []byte
}

// ParseHeader reads and checks the setup header of a bzImage. It never trusts a length
// from the image: every offset it derives is checked against len(image) first. It accepts
// only what the 64-bit boot protocol can boot: boot flag 0xAA55, "HdrS", protocol ≥ 2.12
// (xloadflags, and with it XLF_KERNEL_64, first exist in 2.12; cmdline_size needs 2.06),
// LOADED_HIGH, XLF_KERNEL_64, and a protected-mode part after the setup sectors.
func ParseHeader(image []byte) (Header, error) {
	var h Header
	if len(image) < hdrJumpLenOff+1 {
		return h, fmt.Errorf("parse bzImage header: image is %d bytes, too short to hold a setup header", len(image))
	}
	h.End = 0x202 + int(image[hdrJumpLenOff])
	if h.End > len(image) {
		return h, fmt.Errorf("parse bzImage header: header ends at 0x%x, past the %d-byte image", h.End, len(image))
	}
	// Decode the known fields from a zero-extended copy, so a short header reads zeros
	// rather than bytes that follow it in the image.
	var buf [hdrMinEnd - hdrOffset]byte
	copy(buf[:], image[hdrOffset:min(h.End, hdrMinEnd)])
	if err := binary.Read(bytes.NewReader(buf[:]), binary.LittleEndian, &h.SetupHeader); err != nil {
		return h, fmt.Errorf("parse bzImage header: decode setup_header: %w", err)
	}
	if h.BootFlag != bootFlagMagic {
		return h, fmt.Errorf("parse bzImage header: boot_flag is 0x%04x, want 0xaa55: not a Linux kernel image", h.BootFlag)
	}
	if h.Header != hdrSMagic {
		return h, fmt.Errorf("parse bzImage header: header magic is 0x%08x, want \"HdrS\" (0x53726448): pre-2.00 boot protocol or not a kernel", h.Header)
	}
	if h.Version < minProtocol {
		return h, fmt.Errorf("parse bzImage header: boot protocol %d.%02d is older than 2.12, the first with xloadflags/XLF_KERNEL_64 needed for the 64-bit entry",
			h.Version>>8, h.Version&0xFF)
	}
	need := hdrEnd212
	if h.Version >= 0x020F {
		need = hdrMinEnd
	}
	if h.End < need || h.End > hdrMaxEnd {
		return h, fmt.Errorf("parse bzImage header: header ends at 0x%x, want within [0x%x, 0x%x] for protocol %d.%02d",
			h.End, need, hdrMaxEnd, h.Version>>8, h.Version&0xFF)
	}
	if h.LoadFlags&LoadedHigh == 0 {
		return h, fmt.Errorf("parse bzImage header: loadflags 0x%02x lacks LOADED_HIGH: a zImage, not a bzImage", h.LoadFlags)
	}
	if h.XLoadFlags&XLFKernel64 == 0 {
		return h, fmt.Errorf("parse bzImage header: xloadflags 0x%04x lacks XLF_KERNEL_64: no 64-bit entry point", h.XLoadFlags)
	}
	sects := int(h.SetupSects)
	if sects == 0 {
		sects = defaultSetup
	}
	h.SetupSize = (sects + 1) * sectorSize
	if h.SetupSize >= len(image) {
		return h, fmt.Errorf("parse bzImage header: setup is %d sectors (%d bytes) but the image is %d bytes: no protected-mode kernel",
			sects, h.SetupSize, len(image))
	}
	if h.RelocatableKernel != 0 {
		a := h.KernelAlignment
		if a < pageSize || a&(a-1) != 0 {
			return h, fmt.Errorf("parse bzImage header: kernel_alignment 0x%x is not a power of two ≥ 4 KiB", a)
		}
	}
	h.Raw = append([]byte(nil), image[hdrOffset:h.End]...)
	return h, nil
}
