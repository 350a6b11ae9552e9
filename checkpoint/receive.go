package checkpoint

import (
	"fmt"
	"time"
)

// What each side of a Link reads from the other, in one loop for both
// modes: a primary reads its backup's feedback (acks, resync requests,
// sync rounds applied, its disk image's hashes), a backup its primary's
// stream (checkpoints, replay log batches). The loop ignores heartbeats
// (any message shows the peer alive: see SilentFor), hands each other
// message to the engine's handler, and returns the error that ended it.

// FromBackup is what a primary does with its backup's messages. Every
// handler but MemoryHashes is required; ReceiveFromBackup calls them one at a time, in the
// order the messages arrive.
type FromBackup struct {
	// Ack: the backup committed a.Epoch (an epoch, or an LSN) of
	// a.Generation. An error ends the loop.
	Ack func(a Ack) error
	// Resync: the backup asks for a full sync.
	Resync func(r Resync)
	// Rounds: the backup applied r.Count rounds of the sync under way.
	Rounds func(r Rounds)
	// ImageHashes: part of the backup's disk image, by range hashes,
	// which the primary asked for in its Hello (and maybe again in a
	// sync's first message: h.For says which). An error ends the loop.
	ImageHashes func(h ImageHashes) error
	// MemoryHashes: part of the backup's memory, by range hashes, which
	// the primary asked for and the backup offered in their Hellos, or
	// the primary asked for again in a sync's first message (h.For says
	// which). nil: they are unexpected. An error ends the loop.
	MemoryHashes func(h MemoryHashes) error
}

// ReceiveFromBackup reads the backup's messages and hands each, decoded,
// to h, until the link fails or a message cannot be taken. It returns
// why, never nil: an error wrapping the link's, a decode error (wrapping
// ErrBadMessage), Ack's error, or one naming a message type a backup does
// not send.
func (l *Link) ReceiveFromBackup(h FromBackup) error {
	return l.receive("backup", 0, nil, func(t MsgType, payload []byte) error {
		switch t {
		case MsgAck:
			a, err := DecodeAck(payload)
			if err != nil {
				return err
			}
			return h.Ack(a)
		case MsgResync:
			r, err := DecodeResync(payload)
			if err != nil {
				return err
			}
			h.Resync(r)
		case MsgRounds:
			r, err := DecodeRounds(payload)
			if err != nil {
				return err
			}
			h.Rounds(r)
		case MsgImageHashes:
			ih, err := DecodeImageHashes(payload)
			if err != nil {
				return err
			}
			return h.ImageHashes(ih)
		case MsgMemoryHashes:
			if h.MemoryHashes == nil {
				return fmt.Errorf("unexpected %v from the backup", t)
			}
			mh, err := DecodeMemoryHashes(payload)
			if err != nil {
				return err
			}
			return h.MemoryHashes(mh)
		default:
			return fmt.Errorf("unexpected %v from the backup", t)
		}
		return nil
	})
}

// FromPrimary is what a backup does with its primary's messages. The
// handlers are called one at a time, in the order the messages arrive; a
// payload is valid until its handler returns, and a handler's error ends
// the loop.
type FromPrimary struct {
	// Checkpoint: a checkpoint (required).
	Checkpoint func(payload []byte) error
	// Log: a batch of the replay log. nil: a log is unexpected.
	Log func(payload []byte) error
	// Halt, if not nil, is looked at before each read: an error sent on
	// it (the backup's heartbeats failed, say) ends the loop with that
	// error. Never close it: the loop would end with nil.
	Halt <-chan error
}

// ReceiveFromPrimary reads the primary's messages and hands each to h,
// until the link fails, nothing arrives within silence (the follower's
// failure detector: the primary sends heartbeats more often), or a
// message cannot be taken. It returns why, never nil: an error wrapping
// the link's (ErrSilent for the silence), a handler's error, an error
// from Halt, or one naming a message type h does not take.
func (l *Link) ReceiveFromPrimary(silence time.Duration, h FromPrimary) error {
	return l.receive("primary", silence, h.Halt, func(t MsgType, payload []byte) error {
		switch {
		case t == MsgCheckpoint:
			return h.Checkpoint(payload)
		case t == MsgLog && h.Log != nil:
			return h.Log(payload)
		}
		return fmt.Errorf("unexpected %v from the primary", t)
	})
}

// receive reads messages from peer ("backup", "primary") until handle,
// halt or the link returns an error, which it returns. silence 0 waits
// for each message as long as it takes; halt may be nil.
func (l *Link) receive(peer string, silence time.Duration, halt <-chan error, handle func(MsgType, []byte) error) error {
	for {
		select {
		case err := <-halt:
			return err
		default:
		}
		var (
			t       MsgType
			payload []byte
			err     error
		)
		if silence > 0 {
			t, payload, err = l.NextWithin(silence)
		} else {
			t, payload, err = l.Next()
		}
		if err != nil {
			return fmt.Errorf("reading from the %s: %w", peer, err)
		}
		if t == MsgHeartbeat {
			continue
		}
		if err = handle(t, payload); err != nil {
			return err
		}
	}
}
