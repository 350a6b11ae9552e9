package witness

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// leaseChildEnv, when set to a lease path, makes the test binary a lease
// candidate process instead of running tests (see TestMain).
const leaseChildEnv = "FTCKPT_WITNESS_LEASE_CHILD"

func TestMain(m *testing.M) {
	if path := os.Getenv(leaseChildEnv); path != "" {
		os.Exit(leaseChild(path, os.Getenv("FTCKPT_WITNESS_OWNER"), os.Stdin, os.Stdout))
	}
	os.Exit(m.Run())
}

// leaseChild reads one generation per line and answers, per line, the
// outcome of acquiring it: "won G OWNER", "lost G OWNER" (the holder) or
// "error MESSAGE".
func leaseChild(path, owner string, in io.Reader, out io.Writer) int {
	l, err := OpenLeaseFile(path)
	if err != nil {
		fmt.Fprintln(out, "error", err)
		return 1
	}
	w := bufio.NewWriter(out)
	sc := bufio.NewScanner(in)
	for sc.Scan() {
		g, err := strconv.ParseUint(sc.Text(), 10, 64)
		if err != nil {
			fmt.Fprintln(w, "error", err)
			w.Flush()
			return 1
		}
		c, err := l.Acquire(context.Background(), g, owner)
		var lost *LostError
		switch {
		case err == nil:
			fmt.Fprintln(w, "won", c.Generation, c.Owner)
		case errors.As(err, &lost):
			fmt.Fprintln(w, "lost", lost.Holder.Generation, lost.Holder.Owner)
		default:
			fmt.Fprintln(w, "error", err)
		}
		w.Flush()
	}
	return 0
}

// childArbiter is an Arbiter whose Acquire runs in a child process, so that
// raceRounds races processes, not goroutines.
type childArbiter struct {
	owner string
	cmd   *exec.Cmd
	in    io.WriteCloser
	out   *bufio.Scanner
	local *DiskLease // for Current
}

func startChild(t *testing.T, path, owner string) *childArbiter {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), leaseChildEnv+"="+path, "FTCKPT_WITNESS_OWNER="+owner)
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting candidate process: %v", err)
	}
	local, err := OpenLeaseFile(path)
	if err != nil {
		t.Fatal(err)
	}
	c := &childArbiter{owner: owner, cmd: cmd, in: in, out: bufio.NewScanner(out), local: local}
	t.Cleanup(func() {
		in.Close()
		if err := cmd.Wait(); err != nil {
			t.Errorf("candidate process %s: %v", owner, err)
		}
	})
	return c
}

func (c *childArbiter) Acquire(ctx context.Context, g uint64, owner string) (Claim, error) {
	if owner != c.owner {
		return Claim{}, fmt.Errorf("child %s asked to acquire for %s", c.owner, owner)
	}
	if _, err := fmt.Fprintln(c.in, g); err != nil {
		return Claim{}, err
	}
	if !c.out.Scan() {
		return Claim{}, fmt.Errorf("child %s: no answer: %v", owner, c.out.Err())
	}
	f := strings.SplitN(c.out.Text(), " ", 3)
	if len(f) != 3 || f[0] == "error" {
		return Claim{}, fmt.Errorf("child %s: %s", owner, c.out.Text())
	}
	hg, err := strconv.ParseUint(f[1], 10, 64)
	if err != nil {
		return Claim{}, err
	}
	return outcome(Claim{Generation: hg, Owner: f[2]}, f[0] == "won", g, owner)
}

func (c *childArbiter) Current(ctx context.Context) (Claim, error) { return c.local.Current(ctx) }
func (c *childArbiter) Close() error                               { return nil }

func TestLeaseRaceProcesses(t *testing.T) {
	for _, n := range []int{2, 5} {
		t.Run(fmt.Sprintf("candidates=%d", n), func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "lease")
			arbs := make([]Arbiter, n)
			for i := range arbs {
				arbs[i] = startChild(t, path, fmt.Sprintf("cand-%d", i))
			}
			raceRounds(t, arbs, 1000)
		})
	}
}

// TestLeaseRaceGoroutines races goroutines of one process, each operation
// with its own open file: OFD locks must exclude them, and so must the
// POSIX-lock fallback with its mutex.
func TestLeaseRaceGoroutines(t *testing.T) {
	for _, posix := range []bool{false, true} {
		t.Run(fmt.Sprintf("posix=%v", posix), func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "lease")
			arbs := make([]Arbiter, 5)
			for i := range arbs {
				l, err := OpenLeaseFile(path)
				if err != nil {
					t.Fatal(err)
				}
				if !posix && l.posix {
					t.Skip("this kernel has no OFD locks (Linux < 3.15): only the POSIX-lock fallback can be tested")
				}
				l.posix = posix
				arbs[i] = l
			}
			raceRounds(t, arbs[:2], 300)
			raceRounds(t, arbs, 300)
		})
	}
}

func TestLeaseFileContract(t *testing.T) {
	l, err := OpenLeaseFile(filepath.Join(t.TempDir(), "lease"))
	if err != nil {
		t.Fatal(err)
	}
	checkArbiterContract(t, l)
}

func TestLeaseBlockInImage(t *testing.T) {
	path := filepath.Join(t.TempDir(), "disk.img")
	img := bytes.Repeat([]byte{0xa5}, 1<<20)
	const off = 8192
	clear(img[off : off+leaseBlockSize])
	if err := os.WriteFile(path, img, 0o644); err != nil {
		t.Fatal(err)
	}
	a, err := Open("disk:" + path + "#0x2000")
	if err != nil {
		t.Fatal(err)
	}
	checkArbiterContract(t, a)
	after, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(after[:off], img[:off]) || !bytes.Equal(after[off+leaseBlockSize:], img[off+leaseBlockSize:]) {
		t.Fatal("lease writes touched the image outside the lease block")
	}
	if c, err := decodeLease(after[off : off+leaseBlockSize]); err != nil || c != (Claim{2, "b"}) {
		t.Fatalf("block in image decodes to %v, %v", c, err)
	}
	// The 0xa5 filler is not a lease block: corrupt, not "no holder".
	other, err := OpenLeaseBlock(path, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := other.Current(context.Background()); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Current on a block of image data = %v, want ErrCorrupt", err)
	}
	if _, err := OpenLeaseBlock(path, 1<<20); !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "too small") {
		t.Fatalf("block past the end of the image: %v", err)
	}
	if _, err := OpenLeaseBlock(path, 100); err == nil {
		t.Fatal("unaligned offset accepted")
	}
	if _, err := OpenLeaseBlock(filepath.Join(t.TempDir(), "missing.img"), 0); err == nil {
		t.Fatal("missing image accepted (it must never be created)")
	}
}

// rewriteCRC fixes the checksum after a deliberate edit, so that the field
// check behind it is what must fire.
func rewriteCRC(b []byte) {
	binary.LittleEndian.PutUint32(b[offCRC:], crc32.Checksum(b[:offCRC], crcTable))
}

func TestLeaseCorruption(t *testing.T) {
	good := encodeLease(Claim{Generation: 7, Owner: "host-a"})
	cases := map[string][]byte{}
	for _, bit := range []int{0, 8*offVersion + 1, 8 * offGeneration, 8*offOwner + 3, 8*(offTail+10) + 7, 8*offCRC + 31} {
		b := bytes.Clone(good)
		b[bit/8] ^= 1 << (bit % 8)
		cases[fmt.Sprintf("bitflip@%d", bit)] = b
	}
	cases["truncated"] = good[:300]
	cases["extended"] = append(bytes.Clone(good), 0)
	wrongMagic := bytes.Clone(good)
	copy(wrongMagic, "NOTLEASE")
	rewriteCRC(wrongMagic)
	cases["wrong magic"] = wrongMagic
	wrongVersion := bytes.Clone(good)
	binary.LittleEndian.PutUint16(wrongVersion[offVersion:], 9)
	rewriteCRC(wrongVersion)
	cases["wrong version"] = wrongVersion
	zeroGen := bytes.Clone(good)
	binary.LittleEndian.PutUint64(zeroGen[offGeneration:], 0)
	rewriteCRC(zeroGen)
	cases["generation 0"] = zeroGen
	longOwner := bytes.Clone(good)
	binary.LittleEndian.PutUint16(longOwner[offOwnerLen:], MaxOwnerLen+1)
	rewriteCRC(longOwner)
	cases["owner too long"] = longOwner

	for name, b := range cases {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "lease")
			if err := os.WriteFile(path, b, 0o644); err != nil {
				t.Fatal(err)
			}
			l, err := OpenLeaseFile(path)
			if err != nil {
				if !errors.Is(err, ErrCorrupt) {
					t.Fatalf("open: %v, want ErrCorrupt", err)
				}
				return
			}
			if _, err := l.Current(context.Background()); !errors.Is(err, ErrCorrupt) {
				t.Fatalf("Current = %v, want ErrCorrupt", err)
			}
			for _, g := range []uint64{1, 7, 8} {
				if _, err := l.Acquire(context.Background(), g, "host-b"); !errors.Is(err, ErrCorrupt) {
					t.Fatalf("Acquire(%d) = %v, want ErrCorrupt", g, err)
				}
			}
			after, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(after, b) {
				t.Fatal("a corrupt lease block was overwritten")
			}
			_, err = l.Current(context.Background())
			t.Log(err)
		})
	}
}

func TestLeaseCanceledContext(t *testing.T) {
	l, err := OpenLeaseFile(filepath.Join(t.TempDir(), "lease"))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := l.Acquire(ctx, 1, "a"); !errors.Is(err, ErrUnreachable) || !errors.Is(err, context.Canceled) {
		t.Fatalf("Acquire with a canceled context = %v", err)
	}
}

// TestLeaseLockHeldElsewhere shows the lock bounds the wait by ctx: another
// open file description holds the block's write lock, so Acquire cannot
// decide and says so, and decides once the lock is gone.
func TestLeaseLockHeldElsewhere(t *testing.T) {
	path := filepath.Join(t.TempDir(), "lease")
	l, err := OpenLeaseFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if l.posix {
		t.Skip("this kernel has no OFD locks (Linux < 3.15): only the POSIX-lock fallback can be tested")
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	lockOFD(t, f, true)
	ctx, cancel := context.WithTimeout(context.Background(), 100*msec)
	defer cancel()
	if _, err := l.Acquire(ctx, 1, "a"); !errors.Is(err, ErrUnreachable) {
		t.Fatalf("Acquire under someone else's lock = %v, want ErrUnreachable", err)
	}
	lockOFD(t, f, false)
	// The abandoned attempt may complete now; either way "a" holds 1.
	if c, err := l.Acquire(context.Background(), 1, "a"); err != nil || c != (Claim{1, "a"}) {
		t.Fatalf("Acquire after unlock = %v, %v", c, err)
	}
}

func FuzzDecodeLease(f *testing.F) {
	f.Add(encodeLease(Claim{Generation: 1, Owner: "a"}))
	f.Add(make([]byte, leaseBlockSize))
	f.Add([]byte("FTCKLEAS"))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := decodeLease(b)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("decode error not ErrCorrupt: %v", err)
			}
			return
		}
		if c == (Claim{}) {
			if !isZero(b) {
				t.Fatal("non-zero block decoded as no holder")
			}
			return
		}
		if !bytes.Equal(encodeLease(c), b) {
			t.Fatal("decoded block does not re-encode to the same bytes")
		}
	})
}
