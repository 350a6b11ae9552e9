package vmm

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"sort"
)

// The bare-metal guest contract; guests/include/bootinfo.h mirrors it.
const (
	BootInfoGPA = 0x1000
	GDTGPA      = 0x2000
	PML4GPA     = 0x3000
	ImageGPA    = 0x100000
	ImageMax    = 0x100000
	StacksGPA   = 0x200000
	StackSize   = 0x4000
	FreeGPA     = 0x400000

	PortCOM1    = 0x3f8
	PortPower   = 0x501
	PortClockLo = 0x520
	PortClockHi = 0x524

	bootInfoMagic   = 0x49425446 // "FTBI"
	bootInfoVersion = 1

	MaxParams     = 16
	paramKeyLen   = 32
	paramValueLen = 96
	maxDevices    = 8

	// BootFlagIRQChip says the in-kernel PIC/IOAPIC/LAPIC are present.
	BootFlagIRQChip = 1
)

// Device kinds in the boot-info page. Zero is invalid.
const (
	DeviceVirtioNet = 1
	DeviceVirtioBlk = 2
)

// bootInfo mirrors struct boot_info in guests/include/bootinfo.h.
type bootInfo struct {
	Magic     uint32
	Version   uint32
	NrVCPUs   uint32
	Flags     uint32
	MemSize   uint64
	FreeStart uint64
	NrParams  uint32
	NrDevices uint32
	Params    [MaxParams]bootParam
	Devices   [maxDevices]BootDevice
}

type bootParam struct {
	Key   [paramKeyLen]byte
	Value [paramValueLen]byte
}

// BootDevice mirrors struct bootinfo_device: a device a bare-metal guest can
// drive without enumerating PCI.
type BootDevice struct {
	Kind     uint32
	IRQ      uint32
	IOBase   uint64
	PCIBDF   uint32
	Reserved uint32
}

// ValidateParams says why params cannot be passed to a guest, or nil.
func ValidateParams(params map[string]string) error {
	if len(params) > MaxParams {
		return fmt.Errorf("%d guest parameters, at most %d", len(params), MaxParams)
	}
	for k, v := range params {
		switch {
		case k == "":
			return fmt.Errorf("guest parameter with an empty name")
		case len(k) >= paramKeyLen:
			return fmt.Errorf("guest parameter name %q: longer than %d bytes", k, paramKeyLen-1)
		case len(v) >= paramValueLen:
			return fmt.Errorf("guest parameter %s: value longer than %d bytes", k, paramValueLen-1)
		case bytes.IndexByte([]byte(k+v), 0) >= 0:
			return fmt.Errorf("guest parameter %s: contains a NUL byte", k)
		}
	}
	return nil
}

// encodeBootInfo builds the boot-info page contents. Parameters are sorted by
// name so the page is the same for the same configuration.
func encodeBootInfo(cfg *Config, devices []BootDevice) ([]byte, error) {
	if err := ValidateParams(cfg.Params); err != nil {
		return nil, err
	}
	if len(devices) > maxDevices {
		return nil, fmt.Errorf("%d boot devices, at most %d", len(devices), maxDevices)
	}
	bi := bootInfo{
		Magic: bootInfoMagic, Version: bootInfoVersion,
		NrVCPUs: uint32(cfg.VCPUs), MemSize: uint64(cfg.MemSize), FreeStart: FreeGPA,
		NrParams: uint32(len(cfg.Params)), NrDevices: uint32(len(devices)),
	}
	if cfg.IRQChip {
		bi.Flags |= BootFlagIRQChip
	}
	keys := make([]string, 0, len(cfg.Params))
	for k := range cfg.Params {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for i, k := range keys {
		copy(bi.Params[i].Key[:], k)
		copy(bi.Params[i].Value[:], cfg.Params[k])
	}
	copy(bi.Devices[:], devices)
	var buf bytes.Buffer
	if err := binary.Write(&buf, binary.LittleEndian, &bi); err != nil {
		return nil, fmt.Errorf("encoding boot info: %w", err)
	}
	return buf.Bytes(), nil
}
