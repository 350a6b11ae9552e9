package checkpoint

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"testing"
)

// mirror is a primary's encoder and a backup's image of a mirrored disk,
// with the primary's disk beside them.
type mirror struct {
	t     *testing.T
	rng   *rand.Rand
	enc   *Encoder
	bk    *Backup
	disk  []byte // the primary's disk
	image []byte // the backup's image: what it was told to write
	mem   []byte
	out   []byte
}

// diskSize is not a multiple of DiskBlockSize: the last block is short.
const testDiskSize = 5*DiskBlockSize + 1536

func newMirror(t *testing.T, seed uint64) *mirror {
	t.Helper()
	const pages = 4
	cache, err := NewPageCache(pages * PageSize)
	if err != nil {
		t.Fatal(err)
	}
	bk, err := NewBackup(make([]byte, pages*PageSize), BackupConfig{})
	if err != nil {
		t.Fatal(err)
	}
	m := &mirror{t: t, rng: rand.New(rand.NewPCG(seed, 7)), enc: NewEncoder(cache), bk: bk,
		disk: make([]byte, testDiskSize), image: make([]byte, testDiskSize), mem: make([]byte, pages*PageSize)}
	if err := m.enc.SetDiskSize(testDiskSize); err != nil {
		t.Fatal(err)
	}
	if err := bk.MirrorDisk(testDiskSize); err != nil {
		t.Fatal(err)
	}
	// Some blocks random (raw), some compressible, the rest zero.
	fill(m.rng, m.disk[:DiskBlockSize])
	copy(m.disk[2*DiskBlockSize:], bytes.Repeat([]byte("ftckpt"), 5000))
	fill(m.rng, m.disk[testDiskSize-100:])
	return m
}

func (m *mirror) block(i uint64) []byte {
	return m.disk[i*DiskBlockSize : min(int64(i+1)*DiskBlockSize, testDiskSize)]
}

// encode makes one checkpoint carrying blocks (and writes, if committing).
func (m *mirror) encode(h Header, blocks []uint64, writes *DiskLog) []byte {
	m.t.Helper()
	if err := m.enc.Begin(m.out, h); err != nil {
		m.t.Fatal(err)
	}
	if h.Flags&FlagSyncStart != 0 || h.Kind == KindEpoch {
		for pfn := range uint64(len(m.mem) / PageSize) {
			if err := m.enc.AddPage(pfn, m.mem[pfn*PageSize:(pfn+1)*PageSize]); err != nil {
				m.t.Fatal(err)
			}
		}
	}
	for _, i := range blocks {
		if err := m.enc.AddDiskBlock(i, m.block(i)); err != nil {
			m.t.Fatal(err)
		}
	}
	if writes != nil {
		if err := m.enc.SetDiskLog(*writes); err != nil {
			m.t.Fatal(err)
		}
	}
	var machine []byte
	if h.Kind.commits() {
		machine = []byte("state")
	}
	out, err := m.enc.Finish(machine, false)
	if err != nil {
		m.t.Fatal(err)
	}
	return bytes.Clone(out)
}

// receive hands ck to the backup and writes what it says to the image.
func (m *mirror) receive(ck []byte) (Result, error) {
	res, err := m.bk.Receive(ck)
	if err != nil {
		return res, err
	}
	return res, res.WriteImage(sliceImage(m.image))
}

func (m *mirror) write(epoch uint64) DiskWrite {
	data := make([]byte, 1+m.rng.IntN(9000))
	fill(m.rng, data)
	w := DiskWrite{Epoch: epoch, Off: int64(m.rng.IntN(testDiskSize - len(data))), Data: data}
	copy(m.disk[w.Off:], data)
	return w
}

// A sync in rounds copies the disk; later epochs' writes keep the image
// equal to the primary's disk; every block is encoded the smallest way the
// format allows and decoded exactly.
func TestMirroredDiskSyncAndEpochs(t *testing.T) {
	m := newMirror(t, 1)
	all := []uint64{0, 1, 2, 3, 4, 5}
	if _, err := m.receive(m.encode(Header{Kind: KindSyncRound, Flags: FlagSyncStart, Generation: 1, Epoch: 1}, all[:4], nil)); err != nil {
		t.Fatal(err)
	}
	// The guest writes during the sync: block 1 dirtied again.
	w := m.write(1)
	if _, err := m.receive(m.encode(Header{Kind: KindSyncRound, Generation: 1, Epoch: 1}, all[4:], nil)); err != nil {
		t.Fatal(err)
	}
	dirtied := []uint64{uint64(w.Off / DiskBlockSize)}
	if end := uint64((w.Off + int64(len(w.Data)) - 1) / DiskBlockSize); end != dirtied[0] {
		dirtied = append(dirtied, end)
	}
	res, err := m.receive(m.encode(Header{Kind: KindSyncCommit, Generation: 1, Epoch: 1}, dirtied, &DiskLog{Writes: []DiskWrite{w}}))
	if err != nil || !res.Committed {
		t.Fatalf("sync commit: %+v, %v", res, err)
	}
	if !bytes.Equal(m.image, m.disk) {
		t.Fatal("after the sync the image differs from the disk")
	}
	for e := uint64(2); e < 30; e++ {
		var ws []DiskWrite
		for range m.rng.IntN(3) {
			ws = append(ws, m.write(e))
		}
		if _, err := m.receive(m.encode(Header{Kind: KindEpoch, Generation: 1, Epoch: e}, nil, &DiskLog{Durable: e - 1, Writes: ws})); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(m.image, m.disk) {
			t.Fatalf("epoch %d: the image differs from the disk", e)
		}
	}
}

// A sync commit that has not carried every block is refused by the encoder
// and, forged, by the backup; blocks of another disk, blocks on an epoch,
// blocks to a backup without a mirrored disk and a corrupt lz4 block are
// refused, each with nothing changed.
func TestMirroredDiskRefusals(t *testing.T) {
	m := newMirror(t, 2)
	h := Header{Kind: KindSyncCommit, Flags: FlagSyncStart, Generation: 1, Epoch: 1}
	if err := m.enc.Begin(nil, h); err != nil {
		t.Fatal(err)
	}
	for pfn := range uint64(len(m.mem) / PageSize) {
		m.enc.AddPage(pfn, m.mem[pfn*PageSize:(pfn+1)*PageSize])
	}
	m.enc.AddDiskBlock(0, m.block(0))
	if _, err := m.enc.Finish([]byte("s"), false); !errors.Is(err, ErrIncompleteSync) {
		t.Fatalf("encoder finished a sync missing blocks: %v", err)
	}
	if err := m.enc.AddDiskBlock(0, m.block(0)); !errors.Is(err, ErrEncoderState) {
		t.Fatalf("AddDiskBlock with nothing begun: %v", err)
	}

	// A forged commit of too few blocks: an encoder that believes the disk
	// has one block.
	small := newMirror(t, 3)
	small.enc.SetDiskSize(DiskBlockSize)
	small.disk = small.disk[:DiskBlockSize]
	forged := small.encode(h, []uint64{0}, nil)
	if _, err := m.bk.Receive(forged); !errors.Is(err, ErrDiskMismatch) {
		t.Fatalf("blocks of a smaller disk: %v", err)
	}

	good := m.encode(h, []uint64{0, 1, 2, 3, 4, 5}, nil)
	plain, err := NewBackup(make([]byte, len(m.mem)), BackupConfig{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := plain.Receive(good); !errors.Is(err, ErrDiskMismatch) {
		t.Fatalf("blocks to a backup without a mirrored disk: %v", err)
	}
	if st := plain.Status(); st.State != StateEmpty {
		t.Fatalf("refused sync changed the backup: %v", st)
	}

	// Block 2 is compressible, so LZ4: corrupt its payload's first byte and
	// fix the checksum, as a bad encoder would.
	var ck Checkpoint
	if err := Decode(good, &ck); err != nil {
		t.Fatal(err)
	}
	if ck.Blocks[2].Enc != EncLZ4 || ck.Blocks[0].Enc != EncRaw || ck.Blocks[3].Enc != EncZero {
		t.Fatalf("block encodings %v %v %v: want raw, lz4, zero", ck.Blocks[0].Enc, ck.Blocks[2].Enc, ck.Blocks[3].Enc)
	}
	bad := bytes.Clone(good)
	i := bytes.Index(bad, ck.Blocks[2].Data)
	bad[i] ^= 0xff
	reseal(bad)
	if _, err := m.bk.Receive(bad); !errors.Is(err, ErrBadDiskBlock) {
		t.Fatalf("corrupt lz4 block: %v", err)
	}
	if st := m.bk.Status(); st.State != StateEmpty {
		t.Fatalf("refused sync changed the backup: %v", st)
	}
	if _, err := m.receive(good); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(m.image, m.disk) {
		t.Fatal("image differs after the sync")
	}
	if err := m.enc.Begin(nil, Header{Kind: KindEpoch, Generation: 1, Epoch: 2}); err != nil {
		t.Fatal(err)
	}
	if err := m.enc.AddDiskBlock(0, m.block(0)); !errors.Is(err, ErrForbiddenSection) {
		t.Fatalf("disk block on an epoch: %v", err)
	}
	m.enc.Abort()
}

// A sync whose backup's image has most blocks already (ImageHashes)
// carries those as KEPT records: they count toward the sync's every block,
// the backup writes nothing for them, and its image ends equal to the
// disk. KEPT follows AddDiskBlock's rules: increasing order, sync kinds
// only.
func TestKeptBlocksCoverTheSync(t *testing.T) {
	m := newMirror(t, 4)
	copy(m.image, m.disk)
	m.image[4*DiskBlockSize+10] ^= 0x5a // block 4 differs
	h := Header{Kind: KindSyncRound, Flags: FlagSyncStart, Generation: 1, Epoch: 1}
	if err := m.enc.Begin(nil, h); err != nil {
		t.Fatal(err)
	}
	for pfn := range uint64(len(m.mem) / PageSize) {
		if err := m.enc.AddPage(pfn, m.mem[pfn*PageSize:(pfn+1)*PageSize]); err != nil {
			t.Fatal(err)
		}
	}
	for i := range uint64(6) {
		var err error
		if i == 4 {
			err = m.enc.AddDiskBlock(i, m.block(i))
		} else {
			err = m.enc.AddKeptDiskBlock(i)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if err := m.enc.AddKeptDiskBlock(5); !errors.Is(err, ErrBadDiskBlock) {
		t.Fatalf("a kept block repeated: %v", err)
	}
	round, err := m.enc.Finish(nil, false)
	if err != nil {
		t.Fatal(err)
	}
	round = bytes.Clone(round)
	var ck Checkpoint
	if err := Decode(round, &ck); err != nil {
		t.Fatal(err)
	}
	if len(ck.Blocks) != 6 || ck.Blocks[0].Enc != EncKept || ck.Blocks[4].Enc == EncKept || ck.Blocks[5].Enc != EncKept {
		t.Fatalf("decoded block records %+v: want five kept, block 4 with data", ck.Blocks)
	}
	res, err := m.receive(round)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Blocks) != 1 || res.Blocks[0].Off != 4*DiskBlockSize {
		t.Fatalf("the backup writes %d blocks, want block 4 alone", len(res.Blocks))
	}
	res, err = m.receive(m.encode(Header{Kind: KindSyncCommit, Generation: 1, Epoch: 1}, nil, nil))
	if err != nil || !res.Committed {
		t.Fatalf("a sync commit after a round of kept blocks: %+v, %v", res, err)
	}
	if !bytes.Equal(m.image, m.disk) {
		t.Fatal("after the sync the image differs from the disk")
	}
	if err := m.enc.Begin(nil, Header{Kind: KindEpoch, Generation: 1, Epoch: 2}); err != nil {
		t.Fatal(err)
	}
	if err := m.enc.AddKeptDiskBlock(0); !errors.Is(err, ErrForbiddenSection) {
		t.Fatalf("a kept block on an epoch: %v", err)
	}
	m.enc.Abort()
}

func fill(rng *rand.Rand, p []byte) {
	for i := range p {
		p[i] = byte(rng.Uint32())
	}
}

// Disk hashes ride on committing checkpoints only, in increasing range
// order inside the disk, and reach the backup exactly; a backup of another
// disk refuses them.
func TestDiskHashesRoundTrip(t *testing.T) {
	m := newMirror(t, 4)
	ck := m.encode(Header{Kind: KindSyncCommit, Flags: FlagSyncStart, Generation: 1, Epoch: 1}, []uint64{0, 1, 2, 3, 4, 5}, nil)
	if _, err := m.receive(ck); err != nil {
		t.Fatal(err)
	}
	hashes := []DiskRangeHash{{Range: 0, Sum: [32]byte{1}}, {Range: DiskHashRanges(testDiskSize) - 1, Sum: [32]byte{2, 3}}}
	encode := func(h []DiskRangeHash, size int64) ([]byte, error) {
		if err := m.enc.Begin(nil, Header{Kind: KindEpoch, Generation: 1, Epoch: 2}); err != nil {
			t.Fatal(err)
		}
		if err := m.enc.SetDiskHashes(size, h); err != nil {
			t.Fatal(err)
		}
		return m.enc.Finish([]byte("state"), false)
	}
	if _, err := encode([]DiskRangeHash{hashes[1], hashes[0]}, testDiskSize); !errors.Is(err, ErrBadSection) {
		t.Fatalf("hashes out of order: %v", err)
	}
	// The failed Finish invalidated the cache: sync again.
	if _, err := m.receive(m.encode(Header{Kind: KindSyncCommit, Flags: FlagSyncStart, Generation: 1, Epoch: 2}, []uint64{0, 1, 2, 3, 4, 5}, nil)); err != nil {
		t.Fatal(err)
	}
	if err := m.enc.Begin(nil, Header{Kind: KindEpoch, Generation: 1, Epoch: 3}); err != nil {
		t.Fatal(err)
	}
	m.enc.SetDiskHashes(testDiskSize, hashes)
	out, err := m.enc.Finish([]byte("state"), false)
	if err != nil {
		t.Fatal(err)
	}
	res, err := m.bk.Receive(bytes.Clone(out))
	if err != nil {
		t.Fatal(err)
	}
	if len(res.DiskHashes) != 2 || res.DiskHashes[0] != hashes[0] || res.DiskHashes[1] != hashes[1] {
		t.Fatalf("received hashes %v, sent %v", res.DiskHashes, hashes)
	}
	// Hashes of a larger disk than the backup's.
	if err := m.enc.Begin(nil, Header{Kind: KindEpoch, Generation: 1, Epoch: 4}); err != nil {
		t.Fatal(err)
	}
	m.enc.SetDiskHashes(testDiskSize+DiskHashRange, hashes)
	if out, err = m.enc.Finish([]byte("state"), false); err != nil {
		t.Fatal(err)
	}
	if _, err := m.bk.Receive(out); !errors.Is(err, ErrDiskMismatch) {
		t.Fatalf("hashes of another disk: %v", err)
	}
}

// sliceImage is an image in memory.
type sliceImage []byte

func (s sliceImage) WriteAt(p []byte, off int64) (int, error) { return copy(s[off:], p), nil }
