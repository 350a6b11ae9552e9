package checkpoint

import (
	"bytes"
	"slices"
	"testing"
)

// fuzzBackup returns a committed backup of 8 pages (gen 3, epoch 5) and
// checkpoints that are valid against it, as seeds.
func fuzzBackup(tb testing.TB) (*harness, [][]byte) {
	h := newHarness(tb, 8, 31)
	h.gen = 3
	h.epoch = 4
	h.disk = &DiskLog{Durable: 3, Writes: []DiskWrite{{4, 0, []byte("base")}, {5, 512, []byte("base2")}}}
	h.fullSync()
	// Seeds are valid messages for the backup as it is now (the backup is
	// not advanced): an epoch with every page encoding, a pre-copy round
	// and a one-message sync. The encoder's own state moves on, which does
	// not matter for seeds.
	seeds := [][]byte{}
	h.disk = &DiskLog{Durable: 4, Writes: []DiskWrite{{6, 1024, []byte("six")}, {6, 0, []byte("six again")}}}
	seeds = append(seeds, h.encode(KindEpoch, 0, 6, h.dirty(6, -1), true))
	seeds = append(seeds, h.encode(KindSyncRound, FlagSyncStart, 9, []uint64{0, 3, 5}, false))
	h.disk = &DiskLog{Durable: 2, Writes: []DiskWrite{{3, 0, []byte("three")}, {9, 4096, []byte("nine")}}}
	seeds = append(seeds, h.encode(KindSyncCommit, FlagSyncStart, 9, allPages(8), false))
	return h, seeds
}

// FuzzDecodeCheckpoint feeds arbitrary bytes to a committed Backup, both as
// they are and resealed (so mutations reach the checks behind the
// checksum). It must never panic; a rejection must leave the backup as it
// was; an acceptance must move it exactly to the checkpoint's header and
// keep exactly the disk writes its disk log says.
func FuzzDecodeCheckpoint(f *testing.F) {
	h, seeds := fuzzBackup(f)
	for _, s := range seeds {
		f.Add(s)
	}
	base := snap(h.bk)
	baseMem := bytes.Clone(h.bk.Memory())
	baseMachine := bytes.Clone(h.bk.Machine())
	baseDisk := slices.Clone(h.bk.DiskWrites())
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, in := range [][]byte{data, reseal(bytes.Clone(data))} {
			// Restore the committed state (a previous input may have been accepted).
			copy(h.bk.mem, baseMem)
			h.bk.status = base.status
			h.bk.maxGeneration = 3
			h.bk.machine = append(h.bk.machine[:0], baseMachine...)
			clear(h.bk.covered)
			h.bk.disk = slices.Clone(baseDisk)

			before := snap(h.bk)
			res, err := h.bk.Receive(in)
			after := snap(h.bk)
			if err != nil {
				if !sameSnap(before, after) {
					t.Fatalf("rejected (%v) but the backup changed", err)
				}
				continue
			}
			var ck Checkpoint
			if derr := Decode(in, &ck); derr != nil {
				t.Fatalf("Receive accepted what Decode rejects: %v", derr)
			}
			st := h.bk.Status()
			if st.Generation != res.Header.Generation || st.Epoch != res.Header.Epoch {
				t.Fatalf("accepted %v but status is %+v", res.Header, st)
			}
			if res.Committed && (st.State != StateCommitted || !bytes.Equal(h.bk.Machine(), ck.Machine)) {
				t.Fatalf("committed %v but state %v, machine %q", res.Header, st.State, h.bk.Machine())
			}
			if res.Committed {
				if want := keptAfter(baseDisk, &ck); diskHash(h.bk.DiskWrites()) != diskHash(want) {
					t.Fatalf("committed %v: keeps %s, want %s", res.Header, describe(h.bk.DiskWrites()), describe(want))
				}
			}
		}
	})
}

// keptAfter is what a backup keeping base keeps after committing ck (the
// rule of DiskLog, written out independently of Backup.keepDisk).
func keptAfter(base []DiskWrite, ck *Checkpoint) []DiskWrite {
	var out []DiskWrite
	if ck.Header.Kind == KindEpoch {
		for _, w := range base {
			if !ck.HasDisk || w.Epoch > ck.Disk.Durable {
				out = append(out, w)
			}
		}
	}
	if ck.HasDisk {
		out = append(out, ck.Disk.Writes...)
	}
	return out
}

// FuzzDecodeMessage reads arbitrary bytes as a message stream and decodes
// each payload by type. It must never panic, never return a payload larger
// than its type allows, and re-encoding a decoded message must give back
// the same bytes.
func FuzzDecodeMessage(f *testing.F) {
	var stream bytes.Buffer
	_ = WriteMessage(&stream, MsgHello, Hello{Role: RoleBackup, MemPages: 8, Committed: true, Generation: 3, Epoch: 5}.Append(nil))
	_ = WriteMessage(&stream, MsgAck, Ack{3, 5}.Append(nil))
	_ = WriteMessage(&stream, MsgHeartbeat, Heartbeat{7}.Append(nil))
	_ = WriteMessage(&stream, MsgResync, Resync{Reason: ResyncGap, Generation: 3, Epoch: 5, Detail: "gap"}.Append(nil))
	_ = WriteMessage(&stream, MsgResync, Resync{Reason: ResyncRejected, Generation: 3, Epoch: 5, Rejected: CheckpointName{KindEpoch, 3, 7}, Detail: "crc"}.Append(nil))
	_ = WriteMessage(&stream, MsgRounds, Rounds{3, 6, 2}.Append(nil))
	_ = WriteMessage(&stream, MsgImageHashes, ImageHashes{DiskSize: 3 * DiskHashRange, First: 1, Sums: make([][32]byte, 2)}.Append(nil))
	_ = WriteMessage(&stream, MsgMemoryHashes, MemoryHashes{For: HashesFor{3, 9}, MemPages: 2*MemHashRangePages + 3, First: 2, Sums: make([][32]byte, 1)}.Append(nil))
	_, seeds := fuzzBackup(f)
	_ = WriteMessage(&stream, MsgCheckpoint, seeds[0])
	f.Add(stream.Bytes())
	f.Add(stream.Bytes()[:30])
	const maxCk = 1 << 16
	f.Fuzz(func(t *testing.T, data []byte) {
		r := NewReader(bytes.NewReader(data), maxCk)
		for {
			typ, p, err := r.Next()
			if err != nil {
				return // any error ends the stream; panics and bad payloads are the failures
			}
			var re []byte
			switch typ {
			case MsgHello:
				m, err := DecodeHello(p)
				if err == nil {
					re = m.Append(nil)
				}
			case MsgAck:
				m, err := DecodeAck(p)
				if err == nil {
					re = m.Append(nil)
				}
			case MsgHeartbeat:
				m, err := DecodeHeartbeat(p)
				if err == nil {
					re = m.Append(nil)
				}
			case MsgResync:
				m, err := DecodeResync(p)
				if err == nil {
					re = m.Append(nil)
				}
			case MsgRounds:
				m, err := DecodeRounds(p)
				if err == nil {
					re = m.Append(nil)
				}
			case MsgImageHashes:
				m, err := DecodeImageHashes(p)
				if err == nil {
					re = m.Append(nil)
				}
			case MsgMemoryHashes:
				m, err := DecodeMemoryHashes(p)
				if err == nil {
					re = m.Append(nil)
				}
			case MsgLog:
				continue // opaque here: replay's decoder is fuzzed in modes/replay
			case MsgCheckpoint:
				if len(p) > maxCk {
					t.Fatalf("checkpoint payload of %d bytes past the %d limit", len(p), maxCk)
				}
				var ck Checkpoint
				_ = Decode(p, &ck)
				continue
			default:
				t.Fatalf("Next returned type %v", typ)
			}
			if re != nil && !bytes.Equal(re, p) {
				t.Fatalf("%v: decoded and re-encoded %x, read %x", typ, re, p)
			}
		}
	})
}
