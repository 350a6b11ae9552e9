package vmmtest

import (
	"errors"
	"io"
	"testing"
)

func write(t *testing.T, d *MemDisk, off int64, s string) {
	t.Helper()
	if n, err := d.WriteAt([]byte(s), off); err != nil || n != len(s) {
		t.Fatalf("write %q at %d: %d, %v", s, off, n, err)
	}
}

// A write is read back at once, durable only after a Flush; a crash keeps
// what was flushed and nothing else.
func TestMemDiskDurableAtFlush(t *testing.T) {
	d := NewMemDisk(16)
	write(t, d, 0, "aaaa")
	if err := d.Flush(); err != nil {
		t.Fatal(err)
	}
	write(t, d, 4, "bbbb")
	got := make([]byte, 8)
	if _, err := d.ReadAt(got, 0); err != nil || string(got) != "aaaabbbb" {
		t.Fatalf("read %q, %v", got, err)
	}
	if s := string(d.Durable()[:8]); s != "aaaa\x00\x00\x00\x00" {
		t.Fatalf("durable before the flush: %q", s)
	}
	d.Crash()
	if s := string(d.Bytes()[:8]); s != "aaaa\x00\x00\x00\x00" {
		t.Fatalf("after the crash: %q", s)
	}
	if d.Flushes() != 1 {
		t.Fatalf("%d flushes", d.Flushes())
	}
	if _, err := d.WriteAt([]byte("x"), 16); err == nil {
		t.Fatal("a write past the end was taken")
	}
	if n, err := d.ReadAt(got, 12); n != 4 || err != io.EOF {
		t.Fatalf("a read across the end: %d, %v", n, err)
	}
}

// A failed flush drops the writes it could not make durable, as Linux's
// fdatasync after a writeback error: the next flush that works does not
// write them, only writes made after it.
func TestMemDiskFailedFlushDropsWrites(t *testing.T) {
	d := NewMemDisk(8)
	eio := errors.New("EIO")
	d.FailFlush(eio, false)
	write(t, d, 0, "aa")
	if err := d.Flush(); !errors.Is(err, eio) {
		t.Fatalf("flush: %v", err)
	}
	write(t, d, 4, "bb")
	if err := d.Flush(); err != nil {
		t.Fatal(err)
	}
	if s := string(d.Durable()); s != "\x00\x00\x00\x00bb\x00\x00" {
		t.Fatalf("durable %q: the write the failed flush dropped was made durable", s)
	}
	d.FailFlush(eio, true)
	for range 3 {
		if err := d.Flush(); !errors.Is(err, eio) {
			t.Fatalf("flush while every flush fails: %v", err)
		}
	}
	d.FailFlush(nil, false)
	if err := d.Flush(); err != nil {
		t.Fatal(err)
	}
}

// A refusing disk takes neither writes nor flushes; a growing one grows.
func TestMemDiskRefusesAndGrows(t *testing.T) {
	full := errors.New("full")
	d := NewGrowingMemDisk()
	d.Refuse(full)
	if _, err := d.WriteAt([]byte("x"), 0); !errors.Is(err, full) {
		t.Fatalf("write: %v", err)
	}
	if err := d.Flush(); !errors.Is(err, full) {
		t.Fatalf("flush: %v", err)
	}
	d.Refuse(nil)
	var hooked []string
	d.OnWrite = func(p []byte, off int64) error {
		if string(p) == "no" {
			return full
		}
		return nil
	}
	d.AfterWrite = func(p []byte, off int64) { hooked = append(hooked, string(p)) }
	write(t, d, 3, "abc")
	if _, err := d.WriteAt([]byte("no"), 0); !errors.Is(err, full) {
		t.Fatalf("a write OnWrite refused: %v", err)
	}
	if s := string(d.Bytes()); s != "\x00\x00\x00abc" || d.Size() != 6 || len(hooked) != 1 {
		t.Fatalf("grown to %q (size %d), hooks saw %q", s, d.Size(), hooked)
	}
	d.SetImage([]byte("0123"))
	if s := string(d.Durable()); s != "0123" || d.Size() != 4 {
		t.Fatalf("after SetImage: %q", s)
	}
}
