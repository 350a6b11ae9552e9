package cow

// userfaultfd's interface, from <linux/userfaultfd.h> (abi_test.go checks
// these against the system's header). Only what write protection needs.
const (
	UFFD_API = 0xAA

	UFFDIO_API          = 0xC018AA3F // _IOWR(0xAA, 0x3F, struct uffdio_api)
	UFFDIO_REGISTER     = 0xC020AA00 // _IOWR(0xAA, 0x00, struct uffdio_register)
	UFFDIO_WRITEPROTECT = 0xC018AA06 // _IOWR(0xAA, 0x06, struct uffdio_writeprotect)

	UFFD_FEATURE_PAGEFAULT_FLAG_WP = 1 << 0

	UFFDIO_REGISTER_MODE_WP     = 1 << 1
	UFFDIO_WRITEPROTECT_MODE_WP = 1 << 0

	UFFD_EVENT_PAGEFAULT   = 0x12
	UFFD_PAGEFAULT_FLAG_WP = 1 << 1

	// _UFFDIO_WRITEPROTECT is the bit of uffdio_register.ioctls that says
	// UFFDIO_WRITEPROTECT works on the range registered.
	_UFFDIO_WRITEPROTECT = 0x06
)

// uffdioAPI mirrors struct uffdio_api.
type uffdioAPI struct {
	API      uint64
	Features uint64
	Ioctls   uint64
}

// uffdioRange mirrors struct uffdio_range.
type uffdioRange struct {
	Start uint64
	Len   uint64
}

// uffdioRegister mirrors struct uffdio_register.
type uffdioRegister struct {
	Range  uffdioRange
	Mode   uint64
	Ioctls uint64
}

// uffdioWriteProtect mirrors struct uffdio_writeprotect.
type uffdioWriteProtect struct {
	Range uffdioRange
	Mode  uint64
}

// uffd_msg's layout: 32 bytes; event u8 @0; for a page fault, the
// arg.pagefault flags u64 @8 and address u64 @16.
const (
	msgSize             = 32
	msgEventOffset      = 0
	msgFaultFlagsOffset = 8
	msgFaultAddrOffset  = 16
)
