package simvm

import (
	"errors"
	"testing"

	"github.com/ftckpt/ftckpt/modes/replay"
)

func TestTickGuest(t *testing.T) {
	r := newRig(t, "tick", 64, Param{"ticks", 25}, Param{"every", 5}, Param{"period_ns", 100000}, Param{"work", 500})
	err := r.runUntil(100000, nil)
	if !errors.Is(err, replay.ErrPowerOff) {
		t.Fatalf("run: %v\nconsole:\n%s", err, r.env.console.String())
	}
	t.Logf("console:\n%s", r.env.console.String())
	t.Logf("frames: %d exits %v instructions %d", len(r.env.frames), r.exits, r.m.Instructions())
}

func TestKVQuick(t *testing.T) {
	r := newRig(t, "kv", 64)
	for _, req := range []string{"INCR a", "INCR a", "GET a", "SET b hello world", "GET b", "GET c", "FOO", "INCR b"} {
		r.rx = append(r.rx, []byte(req))
	}
	err := r.runUntil(100000, nil)
	t.Logf("err %v console:\n%s", err, r.env.console.String())
	for _, f := range r.env.frames {
		t.Logf("%q", f)
	}
}
