package linuxboot

import (
	"bytes"
	"encoding/binary"
	"fmt"
)

// zeroPageSize is the size of struct boot_params.
const zeroPageSize = 0x1000

// bootParams mirrors struct boot_params (arch/x86/include/uapi/asm/bootparam.h,
// Documentation/arch/x86/zero-page.rst) for the fields this loader writes; everything else
// is blank padding, which encoding/binary writes as zeros. Offsets are in the comments and
// checked by TestBootParamsLayout.
type bootParams struct {
	_               [0x0C0]byte // screen_info, apm_bios_info, tboot_addr, ist_info, acpi_rsdp_addr, hd0/hd1_info, sys_desc_table, olpc_ofw_header
	ExtRamdiskImage uint32      // 0x0C0 ramdisk_image high 32 bits
	ExtRamdiskSize  uint32      // 0x0C4 ramdisk_size high 32 bits
	ExtCmdLinePtr   uint32      // 0x0C8 cmd_line_ptr high 32 bits
	_               [0x1E8 - 0x0CC]byte
	E820Entries     uint8                       // 0x1E8
	_               [hdrOffset - 0x1E9]byte     // eddbuf_entries … sentinel (0x1EF, left 0) …
	Hdr             SetupHeader                 // 0x1F1
	HdrTail         [hdrMaxEnd - hdrMinEnd]byte // header bytes past kernel_info_offset, as the kernel gave them
	_               [0x2D0 - hdrMaxEnd]byte     // edd_mbr_sig_buffer
	E820Table       [MaxE820Entries]E820Entry   // 0x2D0, 20 bytes each
	_               [zeroPageSize - 0xCD0]byte  // eddbuf and the rest
}

// encode serialises the zero page to its 4096 bytes.
func (bp *bootParams) encode() ([]byte, error) {
	var b bytes.Buffer
	b.Grow(zeroPageSize)
	if err := binary.Write(&b, binary.LittleEndian, bp); err != nil {
		return nil, fmt.Errorf("encode boot_params: %w", err)
	}
	if b.Len() != zeroPageSize {
		return nil, fmt.Errorf("encode boot_params: %d bytes, want %d", b.Len(), zeroPageSize)
	}
	return b.Bytes(), nil
}
