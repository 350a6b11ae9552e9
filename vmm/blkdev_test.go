package vmm

import (
	"bytes"
	"fmt"
	"path/filepath"
	"testing"
)

func TestFileDisk(t *testing.T) {
	path := filepath.Join(t.TempDir(), "disk.img")
	if _, err := CreateFileDisk(path, 1000); err == nil {
		t.Fatal("created a disk of a partial sector")
	}
	d, err := CreateFileDisk(path, 64*sectorSize)
	if err != nil {
		t.Fatal(err)
	}
	data := bytes.Repeat([]byte{0x3c}, sectorSize)
	if _, err := d.WriteAt(data, 7*sectorSize); err != nil {
		t.Fatal(err)
	}
	if err := d.Flush(); err != nil {
		t.Fatal(err)
	}
	d.Close()
	ro, err := OpenFileDisk(path, true)
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()
	got := make([]byte, sectorSize)
	if _, err := ro.ReadAt(got, 7*sectorSize); err != nil || !bytes.Equal(got, data) || ro.Size() != 64*sectorSize {
		t.Fatalf("reopened disk: %v, size %d", err, ro.Size())
	}
	if _, err := ro.WriteAt(data, 0); err == nil {
		t.Fatal("wrote to a read-only disk")
	}
}

// TestOpenOrCreateFileDiskRace starts many openers of one new image at once:
// all get the same, fully sized image, none a half-made one.
func TestOpenOrCreateFileDiskRace(t *testing.T) {
	path := filepath.Join(t.TempDir(), "shared.img")
	const n = 16
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		go func() {
			d, err := OpenOrCreateFileDisk(path, 1<<20)
			if err == nil {
				if d.Size() != 1<<20 {
					err = fmt.Errorf("size %d", d.Size())
				}
				d.Close()
			}
			errs <- err
		}()
	}
	for i := 0; i < n; i++ {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if _, err := OpenOrCreateFileDisk(filepath.Join(t.TempDir(), "bad.img"), 1000); err == nil {
		t.Fatal("a size that is not a multiple of 512 was accepted")
	}
}
