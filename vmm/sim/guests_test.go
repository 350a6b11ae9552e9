package sim

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/ftckpt/ftckpt/vmm/machine"
)

func TestTickGuest(t *testing.T) {
	r := newRig(t, "tick", 64, Param{"ticks", 25}, Param{"every", 5}, Param{"period_ns", 100_000}, Param{"work", 500})
	err := r.runUntil(100000, nil)
	if !errors.Is(err, machine.ErrPowerOff) || !strings.Contains(err.Error(), "status 0") {
		t.Fatalf("run: %v\nconsole:\n%s", err, r.env.console.String())
	}
	if want := "tick: start\ntick 5\ntick 10\ntick 15\ntick 20\ntick 25\ntick: done 25\n"; r.env.console.String() != want {
		t.Errorf("console:\n%s\nwant:\n%s", r.env.console.String(), want)
	}
	if len(r.env.frames) != 5 {
		t.Fatalf("%d frames, want 5", len(r.env.frames))
	}
	for i, f := range r.env.frames {
		tf, err := ParseTickFrame(f)
		if err != nil {
			t.Fatal(err)
		}
		if tf.Ticks != uint64(5*(i+1)) || !slices.Contains(r.env.nows, tf.Clock) {
			t.Errorf("frame %d: %+v: want %d ticks and a clock the Env answered", i, tf, 5*(i+1))
		}
	}
	p, _ := guestProgram("tick")
	m := r.m
	if got := m.read64(p.Symbols["ticks"]); got != 25 {
		t.Errorf("ticks in memory: %d", got)
	}
	for i := uint64(1); i <= 25; i++ {
		if got := m.read64(p.Symbols["tick_history"] + 8*i); got != i {
			t.Errorf("history[%d] = %d", i, got)
		}
	}
	written := 0
	for a := p.Symbols["end"]; a < p.Symbols["end"]+16*PageSize; a += 8 {
		if m.read64(a) != 0 {
			written++
		}
	}
	if written < 1000 {
		t.Errorf("the work wrote only %d words", written)
	}
	if _, err := m.Run(); !errors.Is(err, machine.ErrPowerOff) {
		t.Errorf("Run after power-off: %v", err)
	}
	if _, err := New("tick", 64, r.env, Param{"work_pages", 3}); err == nil {
		t.Error("work_pages=3 accepted")
	}
	if _, err := New("tick", 8, r.env); err == nil {
		t.Error("8 pages accepted for 16 pages of work")
	}
	if _, err := New("tick", 64, r.env, Param{"nope", 1}); err == nil {
		t.Error("an unknown parameter accepted")
	}
}

func TestTimerDevice(t *testing.T) {
	r := newProgramRig(t, `
	.org ENTRY
start:
	li r1, 50000
	outl PORT_TIMER, r1
	inl r2, PORT_TIMER
	li r1, 5
	outl PORT_TIMER, r1
	li r1, 0
	outl PORT_TIMER, r1
	hlt
`, 16)
	m := r.m
	r.env.now = 1_000_000
	step := func() {
		t.Helper()
		e, err := m.Run()
		if err != nil || !e.Kind.IsIO() {
			t.Fatalf("%v %v", e, err)
		}
		if err := m.Complete(&e); err != nil {
			t.Fatal(err)
		}
	}
	step()
	dl, ok := m.TimerDeadline()
	if !ok || dl != 1_001_000+50_000 { // Now answered 1,001,000
		t.Fatalf("deadline %d %v", dl, ok)
	}
	m.PollTimers(dl - 1)
	if m.dev.PIC.Pending != 0 {
		t.Fatal("raised before its deadline")
	}
	m.PollTimers(dl + 10*50_000 + 7) // ten periods late: one interrupt
	if m.dev.PIC.Pending != 1<<IRQTimer {
		t.Fatalf("pending %#x", m.dev.PIC.Pending)
	}
	if next, _ := m.TimerDeadline(); next != dl+11*50_000 {
		t.Fatalf("next deadline %d, want %d", next, dl+11*50_000)
	}
	step()
	if m.cpu.R[2] != 50_000 {
		t.Errorf("inl of the timer: %d", m.cpu.R[2])
	}
	step()
	if m.dev.Timer.Period != TimerMinPeriod {
		t.Errorf("a 5 ns period became %d", m.dev.Timer.Period)
	}
	step()
	if _, ok := m.TimerDeadline(); ok {
		t.Error("period 0 did not stop the timer")
	}
}

// kvModel computes the kv guest's replies, as client.go documents them.
type kvModel struct {
	seq  uint64
	keys []string
	vals map[string]string
}

func (k *kvModel) reply(req string) string {
	k.seq++
	r := func(s string) string { return fmt.Sprint(k.seq, " ", s) }
	if len(req) > 128 {
		return r("ERR too long")
	}
	req = strings.TrimSuffix(req, "\n")
	if strings.HasSuffix(req, "\r") && len(req) > 0 {
		req = strings.TrimSuffix(req, "\r")
	}
	cmd, rest, ok := strings.Cut(req, " ")
	if !ok || cmd != "GET" && cmd != "SET" && cmd != "INCR" {
		return r("ERR syntax")
	}
	key, val, hasVal := strings.Cut(rest, " ")
	switch {
	case len(key) == 0 || len(key) > 32:
		return r("ERR bad key")
	case cmd != "SET" && hasVal, cmd == "SET" && !hasVal:
		return r("ERR syntax")
	case cmd == "SET" && (len(val) == 0 || len(val) > 64):
		return r("ERR bad value")
	}
	cur, have := k.vals[key]
	if !have && cmd != "GET" && len(k.keys) == 63 {
		return r("ERR full")
	}
	switch cmd {
	case "GET":
		if !have {
			return r("NOTFOUND")
		}
		return r("VALUE " + cur)
	case "SET":
		k.set(key, val)
		return r("OK")
	}
	n := uint64(0)
	if have && cur != "" {
		for _, c := range []byte(cur) {
			if c < '0' || c > '9' {
				return r("ERR not a number")
			}
		}
		v, err := strconv.ParseUint(cur, 10, 64)
		if err != nil || v > 1<<63-1 {
			return r("ERR overflow")
		}
		n = v
	}
	if !have {
		k.set(key, "")
	}
	if n == 1<<63-1 {
		return r("ERR overflow")
	}
	k.set(key, strconv.FormatUint(n+1, 10))
	return r("VALUE " + k.vals[key])
}

func (k *kvModel) set(key, val string) {
	if _, ok := k.vals[key]; !ok {
		k.keys = append(k.keys, key)
	}
	k.vals[key] = val
}

// kvExchange sends reqs one at a time (waiting for each reply and for the
// guest to go idle) and returns the replies.
func kvExchange(t *testing.T, r *rig, reqs []string) []string {
	t.Helper()
	var replies []string
	for i, req := range reqs {
		n := len(r.env.frames)
		client := netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 1, byte(i >> 8), byte(i)}), uint16(1000+i))
		r.rx = append(r.rx, Addressed(client, []byte(req)))
		if err := r.runUntil(100000, func() bool { return len(r.env.frames) > n && r.m.Halted() }); err != nil {
			t.Fatalf("request %q: %v\nconsole:\n%s", req, err, r.env.console.String())
		}
		to, reply, err := FrameAddress(r.env.frames[n])
		if err != nil || to != client {
			t.Fatalf("request %q from %v: reply to %v (%v)", req, client, to, err)
		}
		replies = append(replies, string(reply))
	}
	return replies
}

func TestKVGuest(t *testing.T) {
	r := newRig(t, "kv", 64)
	model := &kvModel{vals: map[string]string{}}
	reqs := []string{
		"INCR a", "INCR a", "GET a", "SET b hello world", "GET b", "GET c", "INCR b",
		"FOO", "GET", "GET ", "GET a b", "SET a", "SET a ", "SET k\r\n", "INCR a\n", "GET a\r\n",
		"SET " + strings.Repeat("k", 32) + " v", "SET " + strings.Repeat("k", 33) + " v",
		"SET v " + strings.Repeat("x", 64), "SET v " + strings.Repeat("x", 65), strings.Repeat("GET a", 30),
		"SET big 9223372036854775806", "INCR big", "INCR big", "SET huge 9223372036854775808", "INCR huge",
		"SET z 007", "INCR z", "SET neg -1", "INCR neg", "SET e  x", "GET e", "get a", "INCR  a",
	}
	rng := rand.New(rand.NewPCG(5, 5))
	for range 200 {
		k := fmt.Sprint("r", rng.IntN(70)) // more keys than fit: ERR full
		switch rng.IntN(3) {
		case 0:
			reqs = append(reqs, "INCR "+k)
		case 1:
			reqs = append(reqs, "GET "+k)
		default:
			reqs = append(reqs, fmt.Sprint("SET ", k, " ", rng.IntN(100)))
		}
	}
	replies := kvExchange(t, r, reqs)
	full := 0
	for i, req := range reqs {
		want := model.reply(req)
		if replies[i] != want {
			t.Errorf("%q: got %q, want %q", req, replies[i], want)
		}
		if rep, err := ParseKVReply(Addressed(netip.AddrPort{}, []byte(replies[i]))); err != nil || rep.Seq != uint64(i+1) {
			t.Errorf("%q: parsed %+v, %v", replies[i], rep, err)
		} else if rep.Status == "ERR" && rep.Value == "full" {
			full++
		}
	}
	if full == 0 {
		t.Error("the table never filled")
	}
	if r.m.dev.Net.RxDrops != 0 || r.m.dev.Net.TxErrors != 0 {
		t.Errorf("drops %d, transmit errors %d", r.m.dev.Net.RxDrops, r.m.dev.Net.TxErrors)
	}
}

func TestKVPersistsAndReloads(t *testing.T) {
	r := newRig(t, "kv", 64, Param{"persist_every", 3})
	kvExchange(t, r, []string{"GET x"})
	if !strings.Contains(r.env.console.String(), "kv: new table") {
		t.Fatalf("a blank disk: console %q", r.env.console.String())
	}
	kvExchange(t, r, []string{"SET x 1", "INCR x", "INCR y", "INCR x", "SET z zz", "GET x", "INCR x", "INCR y"})
	// Six updates persisted (after the 3rd and the 6th); the 7th not.
	if got := string(r.env.disk[:8]); got != "KVDB\x01\x00\x00\x00" {
		t.Fatalf("disk header %q", got)
	}
	if got := binary.LittleEndian.Uint64(r.env.disk[8:]); got != 3 {
		t.Errorf("disk says %d keys", got)
	}
	// Restart on the same disk.
	env2 := &testEnv{step: 1000, disk: r.env.disk}
	m2, err := New("kv", 64, env2)
	if err != nil {
		t.Fatal(err)
	}
	r2 := &rig{t: t, m: m2, env: env2, exits: map[machine.ExitKind]int{}}
	replies := kvExchange(t, r2, []string{"GET x", "GET y", "GET z", "INCR x"})
	want := []string{"1 VALUE 4", "2 VALUE 1", "3 VALUE zz", "4 VALUE 5"}
	if !slices.Equal(replies, want) {
		t.Errorf("after a restart: %q, want %q", replies, want)
	}
	if !strings.Contains(env2.console.String(), "kv: loaded 3 keys") {
		t.Errorf("console after a restart: %q", env2.console.String())
	}
	// A disk that fails is fatal, and said so.
	env3 := &testEnv{fail: errors.New("disk on fire")}
	m3, _ := New("kv", 64, env3)
	r3 := &rig{t: t, m: m3, env: env3, exits: map[machine.ExitKind]int{}}
	err = r3.runUntil(1000, nil)
	if err == nil || !strings.Contains(err.Error(), "disk on fire") {
		t.Errorf("a failing disk: %v", err)
	}
}

// A frame too short to name its sender gets no reply (there is nobody to
// send one to); the guest goes on with the next.
func TestKVIgnoresAFrameWithoutAnAddress(t *testing.T) {
	r := newRig(t, "kv", 64)
	kvExchange(t, r, []string{"GET a"}) // booted, slots posted
	n := len(r.env.frames)
	r.m.DeliverFrame([]byte("GET"))
	r.m.DeliverFrame(KVRequest("INCR", "a"))
	if _, err := r.m.InjectPending(); err != nil {
		t.Fatal(err)
	}
	if err := r.runUntil(100000, func() bool { return r.m.Halted() && r.m.dev.Net.RxHead == r.m.dev.Net.RxTail-8 }); err != nil {
		t.Fatal(err)
	}
	if got := len(r.env.frames) - n; got != 1 {
		t.Fatalf("%d replies to a short frame and a request, want 1", got)
	}
	if rep, err := ParseKVReply(r.env.frames[n]); err != nil || rep.Value != "1" {
		t.Fatalf("the reply %+v (%v): want INCR's", rep, err)
	}
}

func TestKVDropsWhenTheRingIsFull(t *testing.T) {
	r := newRig(t, "kv", 64)
	kvExchange(t, r, []string{"GET a"}) // booted, slots posted
	for i := range 11 {
		r.m.DeliverFrame(KVRequest("INCR", "a"))
		if i == 0 {
			r.m.DeliverFrame(make([]byte, NetMaxFrame+1)) // too big for any slot
		}
	}
	if r.m.dev.Net.RxDrops != 4 || r.m.dev.Net.RxHead != 9 {
		t.Fatalf("drops %d head %d: want 4 dropped (3 beyond 8 slots, 1 too big)", r.m.dev.Net.RxDrops, r.m.dev.Net.RxHead)
	}
	if _, err := r.m.InjectPending(); err != nil {
		t.Fatal(err)
	}
	if err := r.runUntil(100000, func() bool { return r.m.Halted() && len(r.env.frames) == 9 }); err != nil {
		t.Fatal(err)
	}
	if last, _ := ParseKVReply(r.env.frames[8]); last.Value != "8" {
		t.Errorf("last reply %+v: want the 8th INCR", last)
	}
}

func TestParseKVReply(t *testing.T) {
	for _, c := range []struct {
		in   string
		want KVReply
		ok   bool
	}{
		{"1 OK", KVReply{1, "OK", ""}, true},
		{"12 VALUE a b", KVReply{12, "VALUE", "a b"}, true},
		{"3 NOTFOUND", KVReply{3, "NOTFOUND", ""}, true},
		{"4 ERR too long", KVReply{4, "ERR", "too long"}, true},
		{"0 OK", KVReply{}, false},
		{"OK", KVReply{}, false},
		{"1 VALUE", KVReply{}, false},
		{"1 OK x", KVReply{}, false},
		{"1 MAYBE", KVReply{}, false},
	} {
		got, err := ParseKVReply(Addressed(netip.AddrPort{}, []byte(c.in)))
		if (err == nil) != c.ok || got != c.want {
			t.Errorf("%q: %+v %v", c.in, got, err)
		}
	}
	if _, err := ParseKVReply([]byte("1 OK")); err == nil {
		t.Error("a reply without an address parsed")
	}
	if _, err := ParseTickFrame(Addressed(netip.AddrPort{}, []byte("TICK"))); err == nil {
		t.Error("a short tick frame parsed")
	}
}

func TestDescribeGuest(t *testing.T) {
	for _, g := range Guests() {
		about, params, err := DescribeGuest(g)
		if err != nil || about == "" || len(params) == 0 {
			t.Errorf("%s: %q %v %v", g, about, params, err)
		}
		if _, err := New(g, MaxPages+1, &testEnv{}); err == nil {
			t.Errorf("%s: %d pages accepted", g, MaxPages+1)
		}
	}
	if _, _, err := DescribeGuest("nosuch"); err == nil || !strings.Contains(err.Error(), "kv, tick") {
		t.Errorf("unknown guest: %v", err)
	}
}

func TestGuestSymbol(t *testing.T) {
	p, _ := guestProgram("tick")
	if a, err := GuestSymbol("tick", "work_loop"); err != nil || a != p.Symbols["work_loop"] || a < EntryBase {
		t.Errorf("tick's work_loop: %#x, %v", a, err)
	}
	if _, err := GuestSymbol("tick", "nosuch"); err == nil {
		t.Error("a label the guest lacks was found")
	}
	if _, err := GuestSymbol("nosuch", "start"); err == nil {
		t.Error("a guest that does not exist has a label")
	}
}
