package checkpoint

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ftckpt/ftckpt/checkpoint/linktest"
)

// receiving is a link whose peer wrote msgs (into the pipe's buffers, all
// before the link reads), then closed its side (ended) or went silent.
func receiving(t *testing.T, ended bool, msgs ...message) *Link {
	t.Helper()
	a, b := linktest.New().Pipe()
	t.Cleanup(func() { a.Close(); b.Close() })
	for _, m := range msgs {
		if err := WriteMessage(b, m.t, m.payload); err != nil {
			t.Fatal(err)
		}
	}
	if ended {
		b.(*linktest.Conn).CloseWrite()
	}
	return NewLink(a, DefaultMaxCheckpoint, nil)
}

type message struct {
	t       MsgType
	payload []byte
}

var (
	heartbeat = message{MsgHeartbeat, Heartbeat{Seq: 1}.Append(nil)}
	errStop   = errors.New("the handler stops")
)

func ack(epoch uint64) message { return message{MsgAck, Ack{Generation: 1, Epoch: epoch}.Append(nil)} }

// recordingFromBackup returns handlers that note each call in got; Ack
// fails with errStop at epoch stopAt.
func recordingFromBackup(got *[]string, stopAt uint64) FromBackup {
	return FromBackup{
		Ack: func(a Ack) error {
			*got = append(*got, fmt.Sprintf("ack %d/%d", a.Generation, a.Epoch))
			if a.Epoch == stopAt {
				return errStop
			}
			return nil
		},
		Resync: func(r Resync) { *got = append(*got, fmt.Sprintf("resync %d %d %q", r.Reason, r.Epoch, r.Detail)) },
		Rounds: func(r Rounds) { *got = append(*got, fmt.Sprintf("rounds %d", r.Count)) },
	}
}

// A primary's loop hands the backup's acks, resync requests and rounds to
// their handlers, decoded and in order, passes over heartbeats, and ends
// on what it cannot take. The backup closes its side after its messages:
// a loop that goes on past its end ends there.
func TestReceiveFromBackup(t *testing.T) {
	resync := Resync{Reason: ResyncRejected, Generation: 1, Epoch: 4, Detail: "bad page"}
	for _, tc := range []struct {
		name    string
		msgs    []message
		want    []string
		wantErr string
		wantIs  error
	}{
		{
			name: "unexpected type",
			msgs: []message{heartbeat, ack(3), heartbeat, {MsgResync, resync.Append(nil)},
				{MsgRounds, Rounds{Generation: 1, Epoch: 5, Count: 2}.Append(nil)}, heartbeat,
				{MsgLog, []byte{1}}, ack(6)},
			want:    []string{"ack 1/3", `resync 1 4 "bad page"`, "rounds 2"},
			wantErr: "unexpected log from the backup",
		},
		{
			name:   "handler error",
			msgs:   []message{ack(3), ack(4), ack(5)},
			want:   []string{"ack 1/3", "ack 1/4"},
			wantIs: errStop,
		},
		{
			name:   "undecodable ack",
			msgs:   []message{ack(3), {MsgAck, Ack{Generation: 0, Epoch: 4}.Append(nil)}, ack(5)},
			want:   []string{"ack 1/3"},
			wantIs: ErrBadMessage,
		},
		{
			name:    "link closed",
			msgs:    []message{ack(3), heartbeat},
			want:    []string{"ack 1/3"},
			wantErr: "reading from the backup",
			wantIs:  io.EOF,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := receiving(t, true, tc.msgs...)
			var got []string
			err := l.ReceiveFromBackup(recordingFromBackup(&got, 4))
			if !slices.Equal(got, tc.want) {
				t.Errorf("handled %q, want %q", got, tc.want)
			}
			checkEnd(t, err, tc.wantErr, tc.wantIs)
		})
	}
}

// A backup's loop hands the primary's checkpoints and log batches to their
// handlers, passes over heartbeats, fails with ErrSilent when nothing
// comes, and ends on what it cannot take or when Halt says so. The
// primary falls silent after its messages: a loop that goes on past its
// end ends there.
func TestReceiveFromPrimary(t *testing.T) {
	ckpt := func(s string) message {
		p := make([]byte, headerSize+trailerSize)
		copy(p, s)
		return message{MsgCheckpoint, p}
	}
	log := func(s string) message { return message{MsgLog, []byte(s)} }
	stops := func(p []byte) error {
		if bytes.HasPrefix(p, []byte("stop")) {
			return errStop
		}
		return nil
	}
	const silence = 50 * time.Millisecond // only "silent" waits it out: the others end on a message
	for _, tc := range []struct {
		name    string
		noLog   bool  // FromPrimary.Log nil, as in checkpoint mode
		halt    error // sent on Halt before the loop starts
		msgs    []message
		want    []string
		wantErr string
		wantIs  error
	}{
		{
			name:   "silent",
			msgs:   []message{heartbeat, log("a"), heartbeat, ckpt(""), log("b")},
			want:   []string{"log a", "checkpoint", "log b"},
			wantIs: ErrSilent,
		},
		{
			name:    "no log handler",
			noLog:   true,
			msgs:    []message{ckpt(""), heartbeat, log("a"), ckpt("")},
			want:    []string{"checkpoint"},
			wantErr: "unexpected log from the primary",
		},
		{
			name:    "unexpected type",
			msgs:    []message{log("a"), ack(1), log("b")},
			want:    []string{"log a"},
			wantErr: "unexpected ack from the primary",
		},
		{
			name:   "log handler error",
			msgs:   []message{log("a"), log("stop"), log("b")},
			want:   []string{"log a", "log stop"},
			wantIs: errStop,
		},
		{
			name:   "checkpoint handler error",
			msgs:   []message{ckpt(""), ckpt("stop"), log("a")},
			want:   []string{"checkpoint", "checkpoint"},
			wantIs: errStop,
		},
		{
			name:   "halt",
			halt:   errStop,
			msgs:   []message{log("a")},
			wantIs: errStop,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := receiving(t, false, tc.msgs...)
			var got []string
			h := FromPrimary{
				Checkpoint: func(p []byte) error {
					got = append(got, "checkpoint")
					return stops(p)
				},
				Log: func(p []byte) error {
					got = append(got, "log "+string(p))
					return stops(p)
				},
			}
			if tc.noLog {
				h.Log = nil
			}
			if tc.halt != nil {
				halt := make(chan error, 1)
				halt <- tc.halt
				h.Halt = halt
			}
			err := l.ReceiveFromPrimary(silence, h)
			if !slices.Equal(got, tc.want) {
				t.Errorf("handled %q, want %q", got, tc.want)
			}
			checkEnd(t, err, tc.wantErr, tc.wantIs)
		})
	}
}

// checkEnd checks a loop's error: it contains wantErr and wraps wantIs
// (either may be empty).
func checkEnd(t *testing.T, err error, wantErr string, wantIs error) {
	t.Helper()
	if err == nil {
		t.Fatal("the loop ended with no error")
	}
	if !strings.Contains(err.Error(), wantErr) {
		t.Errorf("ended with %q, want it to say %q", err, wantErr)
	}
	if wantIs != nil && !errors.Is(err, wantIs) {
		t.Errorf("ended with %q, want it to wrap %q", err, wantIs)
	}
}
