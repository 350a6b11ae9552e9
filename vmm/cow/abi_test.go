package cow

import (
	"testing"
	"unsafe"

	"github.com/ftckpt/ftckpt/vmm/abitest"
)

// abiProgram prints the kernel's values of what uffd.go mirrors.
const abiProgram = `
#include <stdio.h>
#include <stddef.h>
#include <sys/ioctl.h>
#include <linux/userfaultfd.h>
#define P(name, v) printf("%s %lu\n", name, (unsigned long)(v))
int main(void) {
	P("UFFD_API", UFFD_API);
	P("UFFDIO_API", UFFDIO_API);
	P("UFFDIO_REGISTER", UFFDIO_REGISTER);
	P("UFFDIO_WRITEPROTECT", UFFDIO_WRITEPROTECT);
	P("UFFD_FEATURE_PAGEFAULT_FLAG_WP", UFFD_FEATURE_PAGEFAULT_FLAG_WP);
	P("UFFDIO_REGISTER_MODE_WP", UFFDIO_REGISTER_MODE_WP);
	P("UFFDIO_WRITEPROTECT_MODE_WP", UFFDIO_WRITEPROTECT_MODE_WP);
	P("UFFD_EVENT_PAGEFAULT", UFFD_EVENT_PAGEFAULT);
	P("UFFD_PAGEFAULT_FLAG_WP", UFFD_PAGEFAULT_FLAG_WP);
	P("_UFFDIO_WRITEPROTECT", _UFFDIO_WRITEPROTECT);
	P("sizeof uffdio_api", sizeof(struct uffdio_api));
	P("sizeof uffdio_register", sizeof(struct uffdio_register));
	P("sizeof uffdio_writeprotect", sizeof(struct uffdio_writeprotect));
	P("sizeof uffd_msg", sizeof(struct uffd_msg));
	P("offsetof uffd_msg.event", offsetof(struct uffd_msg, event));
	P("offsetof uffd_msg.pagefault.flags", offsetof(struct uffd_msg, arg.pagefault.flags));
	P("offsetof uffd_msg.pagefault.address", offsetof(struct uffd_msg, arg.pagefault.address));
	return 0;
}
`

// TestABIMatchesKernelHeaders checks uffd.go against the system's
// <linux/userfaultfd.h>, compiled with gcc.
func TestABIMatchesKernelHeaders(t *testing.T) {
	abitest.Check(t, "<linux/userfaultfd.h>", abiProgram, map[string]uint64{
		"UFFD_API":                            UFFD_API,
		"UFFDIO_API":                          UFFDIO_API,
		"UFFDIO_REGISTER":                     UFFDIO_REGISTER,
		"UFFDIO_WRITEPROTECT":                 UFFDIO_WRITEPROTECT,
		"UFFD_FEATURE_PAGEFAULT_FLAG_WP":      UFFD_FEATURE_PAGEFAULT_FLAG_WP,
		"UFFDIO_REGISTER_MODE_WP":             UFFDIO_REGISTER_MODE_WP,
		"UFFDIO_WRITEPROTECT_MODE_WP":         UFFDIO_WRITEPROTECT_MODE_WP,
		"UFFD_EVENT_PAGEFAULT":                UFFD_EVENT_PAGEFAULT,
		"UFFD_PAGEFAULT_FLAG_WP":              UFFD_PAGEFAULT_FLAG_WP,
		"_UFFDIO_WRITEPROTECT":                _UFFDIO_WRITEPROTECT,
		"sizeof uffdio_api":                   uint64(unsafe.Sizeof(uffdioAPI{})),
		"sizeof uffdio_register":              uint64(unsafe.Sizeof(uffdioRegister{})),
		"sizeof uffdio_writeprotect":          uint64(unsafe.Sizeof(uffdioWriteProtect{})),
		"sizeof uffd_msg":                     msgSize,
		"offsetof uffd_msg.event":             msgEventOffset,
		"offsetof uffd_msg.pagefault.flags":   msgFaultFlagsOffset,
		"offsetof uffd_msg.pagefault.address": msgFaultAddrOffset,
	})
}
