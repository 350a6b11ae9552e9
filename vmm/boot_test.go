package vmm

import (
	"encoding/binary"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/ftckpt/ftckpt/guests"
)

// walk translates a virtual address through the bare-metal page tables.
func walk(t *testing.T, pt []byte, va uint64) (pa uint64, flags uint64) {
	t.Helper()
	read := func(gpa uint64) uint64 {
		off := gpa - PML4GPA
		if off+8 > uint64(len(pt)) {
			t.Fatalf("table entry at %#x outside the page tables", gpa)
		}
		return binary.LittleEndian.Uint64(pt[off:])
	}
	pml4e := read(PML4GPA + (va>>39&511)*8)
	if pml4e&pteP == 0 {
		t.Fatalf("va %#x: PML4 entry not present", va)
	}
	pdpte := read(pml4e&^0xfff + (va>>30&511)*8)
	if pdpte&pteP == 0 {
		t.Fatalf("va %#x: PDPT entry not present", va)
	}
	pde := read(pdpte&^0xfff + (va>>21&511)*8)
	if pde&pteP == 0 || pde&ptePS == 0 {
		t.Fatalf("va %#x: PD entry %#x not a present 2 MiB page", va, pde)
	}
	return pde&^0x1fffff&^(1<<63) | va&0x1fffff, pde & 0xfff
}

func TestPageTablesIdentityMapAllRAMAndTheHole(t *testing.T) {
	for _, size := range []int64{16 << 20, 3 << 30, 64 << 30} {
		pt := buildPageTables(size)
		if end := pageTablesEnd(size); end > ImageGPA {
			t.Fatalf("size %d: page tables end at %#x, inside the image", size, end)
		}
		top := identityMapTop(size)
		for _, va := range []uint64{0, 0x1000, ImageGPA + 123, FreeGPA, 0xfee00000, 0xfec00000, top - 1, uint64(size) - 1} {
			if va >= top {
				continue
			}
			pa, flags := walk(t, pt, va)
			if pa != va {
				t.Errorf("size %d: va %#x maps to %#x", size, va, pa)
			}
			uncached := flags&(ptePCD|ptePWT) == ptePCD|ptePWT
			if inHole := va >= LowRAMTop && va < HighRAMGPA; uncached != inHole {
				t.Errorf("size %d: va %#x uncached=%v, in MMIO hole=%v", size, va, uncached, inHole)
			}
		}
		if size > LowRAMTop {
			last := HighRAMGPA + uint64(size) - LowRAMTop - 1
			if pa, _ := walk(t, pt, last); pa != last {
				t.Errorf("size %d: last RAM byte %#x maps to %#x", size, last, pa)
			}
		}
	}
}

func TestBootInfoParamsValidated(t *testing.T) {
	long := strings.Repeat("x", 200)
	for _, params := range []map[string]string{
		{"": "1"}, {long: "1"}, {"k": long}, {"k": "a\x00b"},
	} {
		if err := ValidateParams(params); err == nil {
			t.Errorf("params %q accepted", params)
		}
	}
	many := map[string]string{}
	for i := 0; i <= MaxParams; i++ {
		many["k"+strconv.Itoa(i)] = "v"
	}
	if err := ValidateParams(many); err == nil {
		t.Errorf("%d params accepted", len(many))
	}
}

// TestBootInfoMatchesTheCHeader compiles a program against
// guests/include/bootinfo.h and checks the layout the VMM writes against
// the one guests read.
func TestBootInfoMatchesTheCHeader(t *testing.T) {
	gcc, err := exec.LookPath("gcc")
	if err != nil {
		t.Fatalf("gcc is needed to check the guest contract (.ci/run installs it): %v", err)
	}
	prog := `#include <stdio.h>
#include <stddef.h>
#include "bootinfo.h"
int main(void) {
	printf("%zu %zu %zu %zu %zu %zu %zu\n", sizeof(struct boot_info), offsetof(struct boot_info, mem_size),
		offsetof(struct boot_info, params), offsetof(struct boot_info, devices), sizeof(struct bootinfo_device),
		offsetof(struct boot_info, nr_devices), offsetof(struct bootinfo_device, io_base));
	printf("%llu %llu %llu %llu %llu %llu %u %u %u %u\n", FTCKPT_BOOTINFO_GPA, FTCKPT_GDT_GPA, FTCKPT_PML4_GPA,
		FTCKPT_IMAGE_GPA, FTCKPT_STACKS_GPA, FTCKPT_FREE_GPA, FTCKPT_BOOTINFO_MAGIC, FTCKPT_PORT_POWER,
		FTCKPT_PORT_CLOCK_LO, FTCKPT_PORT_CLOCK_HI);
	return 0;
}`
	dir := t.TempDir()
	src := filepath.Join(dir, "bi.c")
	os.WriteFile(src, []byte(prog), 0o644)
	bin := filepath.Join(dir, "bi")
	if out, err := exec.Command(gcc, "-I", "../guests/include", "-o", bin, src).CombinedOutput(); err != nil {
		t.Fatalf("compiling against bootinfo.h: %v\n%s", err, out)
	}
	out, err := exec.Command(bin).Output()
	if err != nil {
		t.Fatal(err)
	}
	var bi bootInfo
	var dev BootDevice
	want := strconv.Itoa(binary.Size(&bi)) + " 16 40 " + strconv.Itoa(40+MaxParams*(paramKeyLen+paramValueLen)) + " " +
		strconv.Itoa(binary.Size(&dev)) + " 36 8\n" +
		strings.Join([]string{
			strconv.Itoa(BootInfoGPA), strconv.Itoa(GDTGPA), strconv.Itoa(PML4GPA), strconv.Itoa(ImageGPA),
			strconv.Itoa(StacksGPA), strconv.Itoa(FreeGPA), strconv.Itoa(bootInfoMagic), strconv.Itoa(PortPower),
			strconv.Itoa(PortClockLo), strconv.Itoa(PortClockHi)}, " ") + "\n"
	if string(out) != want {
		t.Errorf("C header says\n%s\nGo says\n%s", out, want)
	}
}

func TestEncodeBootInfo(t *testing.T) {
	cfg := &Config{VCPUs: 4, MemSize: 64 << 20, IRQChip: true, Params: map[string]string{"limit": "10", "every": "3"}}
	b, err := encodeBootInfo(cfg, []BootDevice{{Kind: DeviceVirtioNet, IRQ: 10, IOBase: 0xc000}})
	if err != nil {
		t.Fatal(err)
	}
	le := binary.LittleEndian
	if le.Uint32(b[0:]) != bootInfoMagic || le.Uint32(b[8:]) != 4 || le.Uint32(b[12:]) != BootFlagIRQChip ||
		le.Uint64(b[16:]) != 64<<20 || le.Uint64(b[24:]) != FreeGPA || le.Uint32(b[32:]) != 2 || le.Uint32(b[36:]) != 1 {
		t.Errorf("header fields wrong: % x", b[:40])
	}
	// Sorted by key: "every" before "limit".
	if k := string(b[40:45]); k != "every" {
		t.Errorf("first param %q, want every", k)
	}
	if v := string(b[40+paramKeyLen : 40+paramKeyLen+1]); v != "3" {
		t.Errorf("first value %q", v)
	}
	devOff := 40 + MaxParams*(paramKeyLen+paramValueLen)
	if le.Uint32(b[devOff:]) != DeviceVirtioNet || le.Uint64(b[devOff+8:]) != 0xc000 {
		t.Errorf("device wrong: % x", b[devOff:devOff+24])
	}
}

// TestEveryGuestImageLoads loads each bundled guest into guest memory
// without KVM. Every guest has a .bss segment with no file bytes, which
// once failed as "reading segment: EOF".
func TestEveryGuestImageLoads(t *testing.T) {
	for _, name := range guests.Names() {
		image, err := guests.Image(name)
		if err != nil {
			t.Fatalf("%s: %v (run make guests)", name, err)
		}
		mem, err := NewGuestMemory(16 << 20)
		if err != nil {
			t.Fatal(err)
		}
		entry, err := loadELF(mem, image)
		mem.Close()
		if err != nil {
			t.Errorf("%s: %v", name, err)
		} else if entry < ImageGPA {
			t.Errorf("%s: entry %#x below the image", name, entry)
		}
	}
}
