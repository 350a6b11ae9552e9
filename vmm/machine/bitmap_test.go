package machine_test

import (
	"math/rand"
	"slices"
	"testing"

	"github.com/ftckpt/ftckpt/vmm/machine"
	"github.com/ftckpt/ftckpt/vmm/machine/machinetest"
)

// refRuns is the reference model: walk every page.
func refRuns(b *machine.Bitmap) []machine.Run {
	var out []machine.Run
	for p := uint64(0); p < b.Len(); p++ {
		if !b.Has(p) {
			continue
		}
		if n := len(out); n > 0 && out[n-1].First+out[n-1].Count == p {
			out[n-1].Count++
		} else {
			out = append(out, machine.Run{First: p, Count: 1})
		}
	}
	return out
}

func TestRunsMatchReference(t *testing.T) {
	r := rand.New(rand.NewSource(1))
	for i := 0; i < 2000; i++ {
		pages := uint64(1 + r.Intn(1000))
		b := machinetest.RandomBitmap(r, pages)
		want := refRuns(b)
		got := slices.Collect(b.Runs())
		if !slices.Equal(got, want) {
			t.Fatalf("case %d, %d pages: Runs() = %v, reference %v", i, pages, got, want)
		}
		total := 0
		for _, run := range want {
			total += int(run.Count)
		}
		if b.Count() != total {
			t.Fatalf("case %d: Count() = %d, reference %d", i, b.Count(), total)
		}
		var marked []uint64
		for p := uint64(0); p < b.Len(); p++ {
			if b.Has(p) {
				marked = append(marked, p)
			}
		}
		if got := b.AppendPages([]uint64{7}); !slices.Equal(got, append([]uint64{7}, marked...)) {
			t.Fatalf("case %d: AppendPages after 7 = %v, reference %v", i, got, marked)
		}
	}
}

func TestRunsEdgeWords(t *testing.T) {
	cases := []struct {
		name  string
		pages uint64
		set   []uint64
		want  []machine.Run
	}{
		{"empty", 200, nil, nil},
		{"bit 63 then bit 64", 200, []uint64{63, 64}, []machine.Run{{63, 2}}},
		{"full word then partial", 200, span(0, 70), []machine.Run{{0, 70}}},
		{"two full words", 128, span(0, 128), []machine.Run{{0, 128}}},
		{"full word, gap, full word", 192, append(span(0, 64), span(128, 64)...), []machine.Run{{0, 64}, {128, 64}}},
		{"alternating", 70, []uint64{0, 2, 4, 69}, []machine.Run{{0, 1}, {2, 1}, {4, 1}, {69, 1}}},
		{"last page", 65, []uint64{64}, []machine.Run{{64, 1}}},
	}
	for _, c := range cases {
		b := machine.NewBitmap(c.pages)
		for _, p := range c.set {
			b.Set(p)
		}
		if got := slices.Collect(b.Runs()); !slices.Equal(got, c.want) {
			t.Errorf("%s: Runs() = %v, want %v", c.name, got, c.want)
		}
	}
}

func span(first, n uint64) []uint64 {
	var out []uint64
	for i := uint64(0); i < n; i++ {
		out = append(out, first+i)
	}
	return out
}

func TestRunsStopsWhenAsked(t *testing.T) {
	b := machine.NewBitmap(1000)
	for p := uint64(0); p < 1000; p += 3 {
		b.Set(p)
	}
	n := 0
	for range b.Runs() {
		n++
		if n == 5 {
			break
		}
	}
	if n != 5 {
		t.Fatalf("iterated %d runs after break at 5", n)
	}
}

func TestClearOrAndBounds(t *testing.T) {
	a, b := machine.NewBitmap(130), machine.NewBitmap(130)
	a.Set(1)
	b.Set(129)
	a.Or(b)
	if !a.Has(1) || !a.Has(129) || a.Count() != 2 {
		t.Fatalf("Or: got %v", slices.Collect(a.Runs()))
	}
	if a.Has(130) || a.Has(1<<40) {
		t.Fatal("Has reports pages beyond the bitmap")
	}
	a.Clear()
	if a.Count() != 0 {
		t.Fatalf("Clear left %d pages", a.Count())
	}
	mustPanic(t, "Set beyond the end", func() { a.Set(130) })
	mustPanic(t, "Or of different lengths", func() { a.Or(machine.NewBitmap(131)) })
}

func mustPanic(t *testing.T, what string, f func()) {
	t.Helper()
	defer func() {
		if recover() == nil {
			t.Errorf("%s did not panic", what)
		}
	}()
	f()
}

func TestSetAll(t *testing.T) {
	for _, pages := range []uint64{1, 63, 64, 130} {
		b := machine.NewBitmap(pages)
		b.SetAll()
		if got, want := slices.Collect(b.Runs()), []machine.Run{{0, pages}}; b.Count() != int(pages) || !slices.Equal(got, want) {
			t.Errorf("SetAll on %d pages: %d marked, runs %v", pages, b.Count(), got)
		}
	}
}
