package session

import (
	"bytes"
	"errors"
	"net"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	format "github.com/ftckpt/ftckpt/checkpoint"
)

// imageFile writes data to a file and opens it, as a backup's image is.
func imageFile(t *testing.T, name string, data []byte) *os.File {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

// A backup's image hashes cross a real connection, imageBatch ranges a
// message; the primary compares them with its disk: the blocks of ranges
// equal on both sides are kept, those of the two ranges that differ are
// not, and a block whose range's hash has not arrived is not decided.
func TestBackupImageComparesRanges(t *testing.T) {
	const ranges = imageBatch + 3 // two messages, the second short
	size := int64(ranges*format.DiskHashRange - 1000)
	disk := make([]byte, size)
	for i := range disk {
		disk[i] = byte(i*31 + i>>13)
	}
	image := bytes.Clone(disk)
	image[5*format.DiskHashRange+77] ^= 1 // range 5
	image[size-1] ^= 1                    // the last, short range
	differ := []uint64{5, ranges - 1}

	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	primary, backup := format.NewLink(a, 0, nil), format.NewLink(b, 0, nil)
	sent := make(chan error, 1)
	go func() {
		// A long timeout: imageBatch ranges a message, however slow the host.
		sent <- SendImageHashes(backup, format.HelloHashes, imageFile(t, "backup.img", image), size, time.Minute, make(chan struct{}))
	}()
	bi := NewBackupImage(imageFile(t, "primary.img", disk), size)
	blocks := make([]uint64, format.DiskBlocks(size))
	for i := range blocks {
		blocks[i] = uint64(i)
	}
	if n, kept, err := bi.Compare(blocks, nil); n != 0 || len(kept) != 0 || err != nil {
		t.Fatalf("before any hash arrived Compare decided %d blocks (%d kept), %v", n, len(kept), err)
	}
	arrived := bi.Arrived()
	for range 2 {
		typ, payload, err := primary.Next()
		if err != nil || typ != format.MsgImageHashes {
			t.Fatalf("the backup sent %v, %v: want image hashes", typ, err)
		}
		h, err := format.DecodeImageHashes(payload)
		if err != nil {
			t.Fatal(err)
		}
		if err := bi.Add(h); err != nil {
			t.Fatal(err)
		}
		select {
		case <-arrived:
		default:
			t.Fatal("Arrived did not close when hashes arrived")
		}
		arrived = bi.Arrived()
		if h.First == 0 {
			// Only the first message's ranges are known: a range's blocks
			// split over two calls get one verdict.
			half := imageBatch * blocksPerRange
			n, kept, err := bi.Compare(blocks[:half-2], nil)
			if err != nil || n != half-2 {
				t.Fatalf("Compare of the first %d blocks: %d decided, %v", half-2, n, err)
			}
			n, kept, err = bi.Compare(blocks[half-2:], kept)
			if err != nil || n != 2 {
				t.Fatalf("Compare past the first message's ranges: %d decided, want 2 (%v)", n, err)
			}
			if want := half - blocksPerRange; len(kept) != want || slices.Contains(kept, 5*blocksPerRange) {
				t.Fatalf("kept %d blocks of the first %d, want %d: all but range 5's", len(kept), half, want)
			}
		}
	}
	if err := <-sent; err != nil {
		t.Fatal(err)
	}
	fresh := NewBackupImage(imageFile(t, "primary2.img", disk), size)
	for first := uint64(0); first < ranges; first += imageBatch {
		sums := make([][32]byte, min(imageBatch, ranges-first))
		buf := make([]byte, format.DiskHashRange)
		for i := range sums {
			sums[i], _ = format.HashDiskRange(bytes.NewReader(image), size, first+uint64(i), buf)
		}
		if err := fresh.Add(format.ImageHashes{DiskSize: size, First: first, Sums: sums}); err != nil {
			t.Fatal(err)
		}
	}
	n, kept, err := fresh.Compare(blocks, nil)
	if err != nil || n != len(blocks) {
		t.Fatalf("Compare with every hash: %d of %d decided, %v", n, len(blocks), err)
	}
	var want []uint64
	for _, blk := range blocks {
		if !slices.Contains(differ, blk/blocksPerRange) {
			want = append(want, blk)
		}
	}
	if !slices.Equal(kept, want) || fresh.Kept() != len(want) {
		t.Fatalf("kept %v (%d counted), want every block but those of ranges %v", kept, fresh.Kept(), differ)
	}
}

// Hashes out of order, or of a disk of another size, are refused: the
// backup is not sending its image's ranges in order, or is of another
// disk.
func TestBackupImageRefusesStrayHashes(t *testing.T) {
	const size = 3 * format.DiskHashRange
	bi := NewBackupImage(bytes.NewReader(make([]byte, size)), size)
	if err := bi.Add(format.ImageHashes{DiskSize: size, First: 1, Sums: make([][32]byte, 1)}); err == nil {
		t.Error("hashes from range 1 first were taken")
	}
	if err := bi.Add(format.ImageHashes{DiskSize: 2 * size, Sums: make([][32]byte, 1)}); err == nil {
		t.Error("hashes of a disk twice the size were taken")
	}
	if err := bi.Add(format.ImageHashes{DiskSize: size, Sums: make([][32]byte, 3)}); err != nil {
		t.Fatal(err)
	}
	if err := bi.Add(format.ImageHashes{DiskSize: size, First: 3, Sums: make([][32]byte, 1)}); err == nil {
		t.Error("hashes past the disk's ranges were taken")
	}
}

// A backup whose image cannot be read says so, and sends nothing more.
func TestSendImageHashesReportsAnUnreadableImage(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	f := imageFile(t, "img", make([]byte, 100))
	f.Close()
	err := SendImageHashes(format.NewLink(b, 0, nil), format.HelloHashes, f, 100, time.Second, make(chan struct{}))
	if !errors.Is(err, os.ErrClosed) {
		t.Fatalf("hashing a closed image: %v", err)
	}
}
