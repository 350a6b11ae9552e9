// Package abitest checks Go mirrors of a kernel interface — ioctl numbers,
// constants, struct sizes and offsets — against the system's C headers,
// compiled with gcc: what keeps the KVM and userfaultfd layers honest on a
// machine that cannot run them. Test support only.
package abitest

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// Check compiles program, a C program that prints one "NAME VALUE" line
// (VALUE in decimal) per name, runs it, and fails t for every name whose
// value differs from want's, that it prints and want lacks, or that want
// has and it does not print. header names what program includes, for the
// messages.
func Check(t testing.TB, header, program string, want map[string]uint64) {
	t.Helper()
	gcc, err := exec.LookPath("gcc")
	if err != nil {
		t.Fatalf("gcc is needed to read %s (.ci/run installs it): %v", header, err)
	}
	dir := t.TempDir()
	src, bin := filepath.Join(dir, "abi.c"), filepath.Join(dir, "abi")
	if err := os.WriteFile(src, []byte(program), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(gcc, "-o", bin, src).CombinedOutput(); err != nil {
		t.Fatalf("compiling against %s (install linux-libc-dev): %v\n%s", header, err, out)
	}
	out, err := exec.Command(bin).Output()
	if err != nil {
		t.Fatal(err)
	}
	kernel := map[string]uint64{}
	sc := bufio.NewScanner(strings.NewReader(string(out)))
	for sc.Scan() {
		line := sc.Text()
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseUint(line[i+1:], 10, 64)
		if i < 0 || err != nil {
			t.Fatalf("the C program printed %q, not NAME VALUE", line)
		}
		kernel[line[:i]] = v
	}
	for name, k := range kernel {
		ours, ok := want[name]
		if !ok {
			t.Errorf("%s: the C program prints it but the test does not check it", name)
			continue
		}
		if ours != k {
			t.Errorf("%s = %#x here, %#x in %s", name, ours, k, header)
		}
	}
	for name := range want {
		if _, ok := kernel[name]; !ok {
			t.Errorf("%s: checked here, but the C program does not print it", name)
		}
	}
}
