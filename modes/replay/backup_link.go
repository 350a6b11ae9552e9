package replay

import (
	"context"
	"errors"
	"fmt"
	"net"

	format "github.com/ftckpt/ftckpt/checkpoint"
)

// The backup's side of the link: the receiver, which queues the primary's
// log and full checkpoints for the replayer, and the acks and resync
// requests it sends back.

// receive reads the stream into the queue and acknowledges what may be,
// until the stream ends (the primary stopped), the link fails or the
// primary falls silent; then it closes conn and the queue with why. If ctx
// ends first, it stops and leaves the queue open: the replayer returns
// ctx's error.
//
// Nothing comes after the end, and nothing this side sends matters then
// (the primary has stopped releasing on acks): closing at once lets a
// primary that is stopping, which waits for this side to close before it
// lets go of the guest's network port, end before this backup goes live
// on that port, rather than after the failure timeout.
func (b *Backup) receive(ctx context.Context, l *format.Link, conn net.Conn) {
	r := &streamReceiver{b: b, ctx: ctx}
	err := l.ReceiveFromPrimary(b.cfg.FailureTimeout, format.FromPrimary{Log: r.log, Checkpoint: r.checkpoint})
	if !errors.Is(err, errReceiverStopped) {
		b.q.close(err)
		conn.Close()
	}
}

// errReceiverStopped ends the receiver when the queue refuses an item:
// Follow's ctx ended (the receiver is the only one to close the queue).
var errReceiverStopped = errors.New("the backup stopped")

// streamReceiver is receive's position in the primary's stream.
type streamReceiver struct {
	b      *Backup
	ctx    context.Context
	batch  Batch
	next   uint64 // the LSN expected next; 0 before the first batch
	gapped bool   // entries were lost: wait for a sync
}

// log queues a batch of the log's entries and acknowledges what may be. A
// batch that does not decode or does not follow on leaves a gap: the
// backup asks for a full checkpoint and drops entries until a sync.
func (r *streamReceiver) log(payload []byte) error {
	b := r.b
	err := DecodeBatch(payload, &r.batch)
	if g := b.gate.generation(); err == nil && g != 0 && r.batch.Generation != g {
		return fmt.Errorf("the primary's log changed from generation %d to %d", g, r.batch.Generation)
	}
	if err == nil && r.next != 0 && r.batch.First != r.next && !r.gapped {
		err = fmt.Errorf("batch starts at LSN %d, expected %d", r.batch.First, r.next)
	}
	if err != nil {
		if !r.gapped {
			r.gapped = true
			b.gate.hold(max(r.next, 1))
			b.askResync(format.ResyncGap, max(r.next, 1), err.Error())
		}
		return nil
	}
	entries := r.batch.Entries
	if r.gapped {
		i := firstSync(entries)
		if i < 0 {
			// Still lost at batch.First: ask again. The primary ignores
			// this if it sent a sync since (which will come); the first
			// request may have been ignored for a sync that was in the
			// lost part.
			b.askResync(format.ResyncGap, r.batch.First, "still waiting for a full checkpoint after a gap")
			return nil
		}
		entries, r.batch.First, r.gapped = entries[i:], r.batch.First+uint64(i), false
	}
	b.gate.setGeneration(r.batch.Generation)
	for i := range entries {
		e := entries[i]
		e.Bytes = append([]byte(nil), e.Bytes...) // the batch buffer is reused
		lsn := r.batch.First + uint64(i)
		if e.Type == EntrySync {
			b.gate.hold(lsn)
		}
		if !b.q.push(r.ctx, item{lsn: lsn, e: e}) {
			return errReceiverStopped
		}
	}
	r.next = r.batch.First + uint64(len(entries))
	b.gate.receive(r.next - 1)
	b.Stats.Received.Store(r.next - 1)
	b.ack()
	return nil
}

// checkpoint queues a full checkpoint's message for the replayer, unless
// its sync entry was lost in a gap.
func (r *streamReceiver) checkpoint(payload []byte) error {
	if r.gapped {
		return nil // its sync entry was lost; another sync will come
	}
	if !r.b.q.push(r.ctx, item{ckpt: append([]byte(nil), payload...)}) {
		return errReceiverStopped
	}
	return nil
}

func firstSync(entries []Entry) int {
	for i := range entries {
		if entries[i].Type == EntrySync {
			return i
		}
	}
	return -1
}

// ack sends the primary the highest LSN the gate allows, if it rose.
// Called by the receiver and the replayer.
func (b *Backup) ack() {
	if a, ok := b.gate.next(); ok {
		msg := format.Ack{Generation: b.gate.generation(), Epoch: a}
		b.link.Send(format.MsgAck, msg.Append(nil), b.cfg.FailureTimeout) // a failure shows as silence
	}
}

// askResync asks the primary for a full checkpoint: the backup cannot
// reproduce the guest from lsn on. The primary ignores the request if it
// began a sync after lsn (the backup will get that one).
func (b *Backup) askResync(reason format.ResyncReason, lsn uint64, detail string) {
	r := format.Resync{Reason: reason, Generation: b.gate.generation(), Epoch: lsn, Detail: detail} // Append cuts Detail
	b.link.Send(format.MsgResync, r.Append(nil), b.cfg.FailureTimeout)
}
