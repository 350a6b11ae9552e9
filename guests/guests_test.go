package guests

import (
	"bytes"
	"context"
	"debug/elf"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"testing/fstest"
	"time"
)

// The image window of include/bootinfo.h: FTCKPT_IMAGE_GPA and
// FTCKPT_IMAGE_GPA + FTCKPT_IMAGE_MAX.
const (
	imageStart = 0x100000
	imageEnd   = 0x200000
)

func TestCatalogMatchesSources(t *testing.T) {
	srcs, err := filepath.Glob("progs/*.c")
	if err != nil {
		t.Fatal(err)
	}
	var fromSrc []string
	for _, s := range srcs {
		fromSrc = append(fromSrc, strings.TrimSuffix(filepath.Base(s), ".c"))
	}
	slices.Sort(fromSrc)
	if !slices.Equal(fromSrc, Names()) {
		t.Fatalf("progs/*.c has %v but Names() is %v", fromSrc, Names())
	}
	for _, n := range Names() {
		if d := Describe(n); d == "" || strings.Contains(d, "\n") {
			t.Errorf("Describe(%q) = %q, want one non-empty line", n, d)
		}
	}
	if d := Describe("nope"); d != "" {
		t.Errorf("Describe(nope) = %q, want empty", d)
	}
}

func TestImageErrors(t *testing.T) {
	empty := fstest.MapFS{"build/.gitkeep": {}}
	_, err := image(empty, "counter")
	if err == nil || !strings.Contains(err.Error(), "guest \"counter\" is not built: run `make guests`") {
		t.Errorf("missing image: err = %v", err)
	}
	_, err = image(empty, "nope")
	if err == nil || !strings.Contains(err.Error(), "unknown guest \"nope\" (have: counter, disk, kv, memtouch, smp, tick)") {
		t.Errorf("unknown guest: err = %v", err)
	}
	_, err = image(empty, "../build/counter")
	if err == nil || !strings.Contains(err.Error(), "unknown guest") {
		t.Errorf("path-like name: err = %v", err)
	}
	full := fstest.MapFS{"build/kv.elf": {Data: []byte("ELF bytes")}}
	b, err := image(full, "kv")
	if err != nil || string(b) != "ELF bytes" {
		t.Errorf("image(kv) = %q, %v", b, err)
	}
}

// TestImagesAreLoadable checks every guest is built and is an ELF the
// VMM's loader accepts: ELF64 x86-64 executable, PT_LOAD segments inside
// the 1 MiB image window, entry point in an executable segment.
func TestImagesAreLoadable(t *testing.T) {
	for _, name := range Names() {
		t.Run(name, func(t *testing.T) {
			img, err := Image(name)
			if err != nil {
				t.Fatal(err)
			}
			f, err := elf.NewFile(bytes.NewReader(img))
			if err != nil {
				t.Fatalf("parsing ELF: %v", err)
			}
			if f.Class != elf.ELFCLASS64 || f.Data != elf.ELFDATA2LSB || f.Machine != elf.EM_X86_64 || f.Type != elf.ET_EXEC {
				t.Fatalf("got %v %v %v %v, want ELFCLASS64 little-endian EM_X86_64 ET_EXEC", f.Class, f.Data, f.Machine, f.Type)
			}
			loads, entryOK := 0, false
			for _, p := range f.Progs {
				switch p.Type {
				case elf.PT_INTERP, elf.PT_DYNAMIC:
					t.Errorf("segment %v: guests must be static", p.Type)
				case elf.PT_LOAD:
					loads++
					if p.Vaddr != p.Paddr {
						t.Errorf("PT_LOAD vaddr %#x != paddr %#x", p.Vaddr, p.Paddr)
					}
					if p.Paddr < imageStart || p.Memsz > imageEnd || p.Paddr > imageEnd-p.Memsz {
						t.Errorf("PT_LOAD [%#x, %#x) outside [%#x, %#x)", p.Paddr, p.Paddr+p.Memsz, imageStart, imageEnd)
					}
					if p.Filesz > p.Memsz || p.Off > uint64(len(img)) || p.Filesz > uint64(len(img))-p.Off {
						t.Errorf("PT_LOAD filesz %#x memsz %#x off %#x in a %d-byte file", p.Filesz, p.Memsz, p.Off, len(img))
					}
					if p.Flags&elf.PF_X != 0 && p.Flags&elf.PF_W != 0 {
						t.Errorf("PT_LOAD at %#x is both writable and executable", p.Paddr)
					}
					if p.Flags&elf.PF_X != 0 && f.Entry >= p.Vaddr && f.Entry < p.Vaddr+p.Filesz {
						entryOK = true
					}
				}
			}
			if loads == 0 {
				t.Error("no PT_LOAD segment")
			}
			if !entryOK {
				t.Errorf("entry %#x is not in an executable PT_LOAD", f.Entry)
			}
			if syms, err := f.Symbols(); err == nil {
				for _, s := range syms {
					if s.Name == "_start" && s.Value != f.Entry {
						t.Errorf("entry %#x is not _start (%#x)", f.Entry, s.Value)
					}
				}
			}
		})
	}
}

// forbidden are instructions whose results the VMM cannot see or log, so
// replay would diverge (DESIGN.md, "Replay without performance counters").
var forbidden = []string{"rdtsc", "rdtscp", "rdrand", "rdseed"}

// forbiddenInstructions returns the lines of `objdump -d` output (raw
// bytes shown) that decode to a forbidden instruction: by mnemonic, or by
// opcode 0F 31 (RDTSC) or 0F C7 /6 (RDRAND) / /7 (RDSEED) after prefixes.
func forbiddenInstructions(objdump string) []string {
	var hits []string
	for _, in := range instructions(objdump) {
		if len(in.text) > 0 && slices.Contains(forbidden, in.text[0]) || hasForbiddenOpcode(in.bytes) {
			hits = append(hits, in.line)
		}
	}
	return hits
}

// instruction is one instruction line of `objdump -d -w` output: the line
// (trimmed), its bytes (hex strings) and its text (mnemonic, operands).
type instruction struct {
	line        string
	bytes, text []string
}

// instructions returns the instruction lines of objdump, in order.
func instructions(objdump string) []instruction {
	var ins []instruction
	for _, line := range strings.Split(objdump, "\n") {
		cols := strings.Split(line, "\t")
		if len(cols) < 3 || !strings.HasSuffix(strings.TrimSpace(cols[0]), ":") {
			continue
		}
		ins = append(ins, instruction{line: strings.TrimSpace(line), bytes: strings.Fields(cols[1]), text: strings.Fields(cols[2])})
	}
	return ins
}

// hasForbiddenOpcode looks at one instruction's bytes (hex strings).
func hasForbiddenOpcode(b []string) bool {
	i := 0
	for i < len(b) {
		switch {
		case b[i] == "66" || b[i] == "f2" || b[i] == "f3" || b[i] == "f0":
			i++
			continue
		case len(b[i]) == 2 && b[i][0] == '4': // REX
			i++
			continue
		}
		break
	}
	if i+1 >= len(b) || b[i] != "0f" {
		return false
	}
	if b[i+1] == "31" {
		return true
	}
	if b[i+1] == "c7" && i+2 < len(b) {
		var modrm byte
		for _, c := range b[i+2] {
			modrm = modrm<<4 | byte(strings.IndexRune("0123456789abcdef", c))
		}
		reg := modrm >> 3 & 7
		return modrm>>6 == 3 && (reg == 6 || reg == 7)
	}
	return false
}

func objdump(t *testing.T, path string) string {
	t.Helper()
	out, err := exec.Command("objdump", "-d", "-w", path).CombinedOutput()
	if err != nil {
		t.Fatalf("objdump -d %s: %v\n%s", path, err, out)
	}
	return string(out)
}

// disassembled returns `objdump -d` of every guest, by name.
func disassembled(t *testing.T) map[string]string {
	t.Helper()
	if _, err := exec.LookPath("objdump"); err != nil {
		t.Fatal("objdump (binutils, which .ci/run installs) not found: cannot scan the guests' instructions")
	}
	dir := t.TempDir()
	dumps := map[string]string{}
	for _, name := range Names() {
		img, err := Image(name)
		if err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(dir, name+".elf")
		if err := os.WriteFile(path, img, 0o644); err != nil {
			t.Fatal(err)
		}
		out := objdump(t, path)
		if !strings.Contains(out, "<_start>:") {
			t.Fatalf("%s: objdump shows no _start; output:\n%.2000s", name, out)
		}
		dumps[name] = out
	}
	return dumps
}

func TestNoRDTSCOrRDRAND(t *testing.T) {
	for name, out := range disassembled(t) {
		if hits := forbiddenInstructions(out); len(hits) > 0 {
			t.Errorf("%s executes instructions replay cannot see:\n%s", name, strings.Join(hits, "\n"))
		}
	}
}

func TestNoRFLAGSSavedInAShadow(t *testing.T) {
	for name, out := range disassembled(t) {
		if hits := shadowedSavers(out); len(hits) > 0 {
			t.Errorf("%s saves RFLAGS in an interrupt shadow:\n%s", name, strings.Join(hits, "\n"))
		}
	}
}

// savesRFLAGS are instructions that push RFLAGS where the guest can read
// it: right after an STI or a load of SS (an interrupt shadow) they would
// save the trap flag of the single step the replay primary takes to leave
// the shadow at a kick (vmm.Stepper.leaveShadow; README, Known limits).
var savesRFLAGS = []string{"pushf", "pushfq", "pushfw", "int", "int1", "int3", "into", "ud2", "syscall", "sysenter"}

// shadowedSavers returns the lines of `objdump -d` output whose instruction
// opens an interrupt shadow (STI, MOV to SS, POP SS) and is followed by one
// of savesRFLAGS.
func shadowedSavers(objdump string) []string {
	var hits []string
	prev := ""
	for _, in := range instructions(objdump) {
		insn := in.text
		if len(insn) == 0 {
			continue
		}
		if prev != "" && slices.Contains(savesRFLAGS, insn[0]) {
			hits = append(hits, prev+" / "+in.line)
		}
		prev = ""
		if insn[0] == "sti" || len(insn) > 1 && (strings.HasPrefix(insn[0], "mov") && strings.HasSuffix(insn[1], ",%ss") || strings.HasPrefix(insn[0], "pop") && insn[1] == "%ss") {
			prev = in.line
		}
	}
	return hits
}

// TestScannerFindsForbidden proves the scan can fail: an object with the
// forbidden instructions (and look-alike immediates) is flagged exactly.
func TestScannerFindsForbidden(t *testing.T) {
	if _, err := exec.LookPath("objdump"); err != nil {
		t.Fatal("objdump (binutils, which .ci/run installs) not found")
	}
	if _, err := exec.LookPath("gcc"); err != nil {
		t.Fatal("gcc (which make and .ci/run need for the guests) not found: cannot assemble the scanner's test object")
	}
	dir := t.TempDir()
	src := filepath.Join(dir, "bad.S")
	asm := ".text\n" +
		"mov $0x310f, %eax\n" + // 0F 31 inside an immediate: not an instruction
		"rdtsc\n" +
		"rdtscp\n" +
		"rdrand %eax\n" +
		"rdrand %r9\n" +
		"rdseed %ecx\n" +
		"cmpxchg8b (%rdi)\n" + // 0F C7 /1: allowed
		"sti\n" + "pushfq\n" + // a shadowed save
		"mov %ax, %ss\n" + "int3\n" + // another
		"sti\n" + "hlt\n" + "pushfq\n" + // not shadowed
		"ret\n"
	if err := os.WriteFile(src, []byte(asm), 0o644); err != nil {
		t.Fatal(err)
	}
	obj := filepath.Join(dir, "bad.o")
	if out, err := exec.Command("gcc", "-c", "-o", obj, src).CombinedOutput(); err != nil {
		t.Fatalf("assembling: %v\n%s", err, out)
	}
	dump := objdump(t, obj)
	hits := forbiddenInstructions(dump)
	if len(hits) != 5 {
		t.Fatalf("found %d forbidden instructions, want 5:\n%s", len(hits), strings.Join(hits, "\n"))
	}
	if hits := shadowedSavers(dump); len(hits) != 2 {
		t.Fatalf("found %d saves of RFLAGS in a shadow, want 2:\n%s", len(hits), strings.Join(hits, "\n"))
	}
	for _, raw := range [][]string{{"0f", "31"}, {"48", "0f", "c7", "f0"}, {"0f", "c7", "f8"}} {
		if !hasForbiddenOpcode(raw) {
			t.Errorf("bytes %v not flagged", raw)
		}
	}
	for _, raw := range [][]string{{"0f", "c7", "0f"}, {"b8", "0f", "31", "00", "00"}, {"0f"}} {
		if hasForbiddenOpcode(raw) {
			t.Errorf("bytes %v flagged", raw)
		}
	}
}

// TestHostHarness builds guests/test (C with a main) together with the
// pure guest code (pure/*.c) using the host gcc, with AddressSanitizer
// and UndefinedBehaviorSanitizer when they link, and runs it.
func TestHostHarness(t *testing.T) {
	if _, err := exec.LookPath("gcc"); err != nil {
		t.Fatal("gcc (which make and .ci/run need for the guests) not found: the guests' pure code (kv protocol, frames, records, vring, CRC) cannot be tested")
	}
	srcs, err := filepath.Glob("test/*.c")
	if err != nil {
		t.Fatal(err)
	}
	pure, err := filepath.Glob("pure/*.c")
	if err != nil {
		t.Fatal(err)
	}
	if len(srcs) == 0 || len(pure) == 0 {
		t.Fatalf("no sources: test/*.c %v, pure/*.c %v", srcs, pure)
	}
	bin := filepath.Join(t.TempDir(), "harness")
	base := []string{"-std=gnu11", "-O1", "-g", "-Wall", "-Wextra", "-Werror", "-Wno-format-truncation",
		"-Iinclude", "-Ipure", "-o", bin}
	args := append(append(append([]string{}, base...), srcs...), pure...)
	san := []string{"-fsanitize=address,undefined", "-fno-sanitize-recover=all"}
	out, err := exec.Command("gcc", append(san, args...)...).CombinedOutput()
	if err != nil {
		t.Logf("building with sanitizers failed (%v), building without:\n%s", err, out)
		if out, err = exec.Command("gcc", args...).CombinedOutput(); err != nil {
			t.Fatalf("building the harness: %v\n%s", err, out)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin)
	cmd.Env = append(os.Environ(), "ASAN_OPTIONS=detect_leaks=1")
	out, err = cmd.CombinedOutput()
	t.Logf("harness output:\n%s", out)
	if err != nil {
		t.Fatalf("harness failed: %v", err)
	}
	if !bytes.Contains(out, []byte(", 0 failures\n")) {
		t.Fatalf("harness did not report a clean run")
	}
}

// TestMemtouchConsole reads passes and pages dirtied from memtouch's lines,
// whole or split across writes, and ignores other lines.
func TestMemtouchConsole(t *testing.T) {
	var c MemtouchConsole
	for _, w := range []string{"memtouch: start ws=4\n", "memtouch: pass 1 dirt", "ied 1024 check=00ff\nmem", "touch: pass 2 dirtied 2048 check=0\n", "memtouch: pass x dirtied 9\n"} {
		c.Write([]byte(w))
	}
	if c.Pass() != 2 || c.Dirtied() != 2048 {
		t.Fatalf("pass %d dirtied %d, want 2 and 2048", c.Pass(), c.Dirtied())
	}
}
