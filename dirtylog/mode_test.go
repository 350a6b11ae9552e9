package dirtylog

import (
	"strings"
	"testing"
)

func TestParseMode(t *testing.T) {
	for in, want := range map[string]Mode{"bitmap": ModeBitmap, "ring": ModeRing, "auto": ModeAuto, " Ring ": ModeRing} {
		if got, err := ParseMode(in); err != nil || got != want {
			t.Errorf("ParseMode(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"", "rings", "log", "0"} {
		_, err := ParseMode(in)
		if err == nil || !strings.Contains(err.Error(), "must be bitmap, ring or auto") {
			t.Errorf("ParseMode(%q): err %v, want a clear refusal", in, err)
		}
	}
	if s := Mode(0).String(); !strings.Contains(s, "invalid") {
		t.Errorf("zero Mode prints as %q", s)
	}
}

func TestChooseAndRingEntries(t *testing.T) {
	ring := Host{MaxRingBytes: 65536 * 16}
	none := Host{}
	cases := []struct {
		mode    Mode
		mem     int64
		host    Host
		want    Mode
		entries int
		err     string
	}{
		{ModeBitmap, 64 << 30, ring, ModeBitmap, 0, ""},
		{ModeRing, 256 << 20, ring, ModeRing, DefaultRingEntries, ""},
		{ModeRing, 64 << 30, none, 0, 0, "largest dirty ring is 0 bytes"},
		{ModeAuto, 256 << 20, ring, ModeBitmap, 0, ""},
		{ModeAuto, AutoRingMinMemory - 2<<20, ring, ModeBitmap, 0, ""},
		{ModeAuto, AutoRingMinMemory, ring, ModeRing, DefaultRingEntries, ""},
		{ModeAuto, 64 << 30, none, ModeBitmap, 0, ""},
		{ModeAuto, 64 << 30, Host{MaxRingBytes: 4096}, ModeBitmap, 0, ""},
		{ModeAuto, 64 << 30, Host{MaxRingBytes: 65536 * 16, RingsOverflow: true}, ModeBitmap, 0, ""},
		{ModeRing, 64 << 30, Host{MaxRingBytes: 65536 * 16, RingsOverflow: true}, ModeRing, DefaultRingEntries, ""},
		{Mode(0), 1 << 30, ring, 0, 0, "invalid"},
	}
	for _, c := range cases {
		got, err := Choose(c.mode, c.mem, c.host)
		n, nerr := RingEntriesFor(c.mode, c.mem, c.host)
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) || nerr == nil {
				t.Errorf("Choose(%v, %d, %+v): err %v / %v, want %q", c.mode, c.mem, c.host, err, nerr, c.err)
			}
			continue
		}
		if err != nil || got != c.want || nerr != nil || n != c.entries {
			t.Errorf("Choose(%v, %d, %+v) = %v, %v; entries %d, %v; want %v, %d", c.mode, c.mem, c.host, got, err, n, nerr, c.want, c.entries)
		}
	}
}
