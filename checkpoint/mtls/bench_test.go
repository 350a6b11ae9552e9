package mtls_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"syscall"
	"testing"
	"time"

	format "github.com/ftckpt/ftckpt/checkpoint"
	"github.com/ftckpt/ftckpt/checkpoint/mtls"
)

// The cost of TLS on the replication link: the same checkpoint stream
// shipped from a primary to a backup over loopback TCP, in plain TCP and
// in mutual TLS 1.3, framed as checkpoint mode frames it (WriteMessage,
// Reader).

const (
	benchMem    = 64 << 20 // guest memory
	benchDirty  = 2048     // pages dirtied per epoch (8 MiB)
	benchEpochs = 16
)

// shipStream is checkpoint mode's stream after its full sync: benchEpochs
// epoch checkpoints of benchDirty pages each, encoded by the real encoder
// against its page cache. change says how each dirty page changes: "few"
// rewrites 16 bytes (XOR+lz4 shrinks it), "random" rewrites it whole
// (incompressible: every byte crosses the wire).
func shipStream(tb testing.TB, change string) [][]byte {
	tb.Helper()
	rng := rand.New(rand.NewPCG(1, 2))
	fill := rand.NewChaCha8([32]byte{1})
	mem := make([]byte, benchMem)
	fill.Read(mem)
	cache, err := format.NewPageCache(benchMem)
	if err != nil {
		tb.Fatal(err)
	}
	enc := format.NewEncoder(cache)
	pages := uint64(benchMem / format.PageSize)
	encode := func(h format.Header, pfns []uint64) []byte {
		if err := enc.Begin(nil, h); err != nil {
			tb.Fatal(err)
		}
		for _, p := range pfns {
			if err := enc.AddPage(p, mem[p*format.PageSize:(p+1)*format.PageSize]); err != nil {
				tb.Fatal(err)
			}
		}
		ck, err := enc.Finish([]byte("machine state"), false)
		if err != nil {
			tb.Fatal(err)
		}
		return append([]byte(nil), ck...)
	}
	all := make([]uint64, pages)
	for i := range all {
		all[i] = uint64(i)
	}
	encode(format.Header{Kind: format.KindSyncCommit, Flags: format.FlagSyncStart, Generation: 1, Epoch: 1}, all)
	var stream [][]byte
	for e := range benchEpochs {
		dirty := make([]uint64, 0, benchDirty)
		for p := uint64(rng.IntN(int(pages - benchDirty))); len(dirty) < benchDirty; p++ {
			dirty = append(dirty, p)
			page := mem[p*format.PageSize : (p+1)*format.PageSize]
			switch change {
			case "few":
				off := rng.IntN(format.PageSize - 16)
				for i := range 16 {
					page[off+i] = byte(rng.Uint32())
				}
			default:
				fill.Read(page)
			}
		}
		stream = append(stream, encode(format.Header{Kind: format.KindEpoch, Generation: 1, Epoch: uint64(e + 2)}, dirty))
	}
	return stream
}

// link is a connected primary→backup pair on loopback, through the
// handshake of mtls (plain TCP with a nil identity), and the backup's
// reader.
func link(tb testing.TB, primary, backup *mtls.Identity) (w net.Conn, r net.Conn) {
	tb.Helper()
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	ln := mtls.Listen(inner, mtls.ListenOptions{Identity: backup, Proto: format.ALPN, Confirm: true, Log: quiet})
	tb.Cleanup(func() { ln.Close() })
	w, err = mtls.Dial(context.Background(), inner.Addr().String(), mtls.DialOptions{Identity: primary, Proto: format.ALPN, Confirm: true})
	if err != nil {
		tb.Fatal(err)
	}
	if primary == nil {
		// The plain listener waits for the dialler's first bytes.
		format.WriteMessage(w, format.MsgHeartbeat, format.Heartbeat{Seq: 1}.Append(nil))
	}
	if r, err = ln.Accept(); err != nil {
		tb.Fatal(err)
	}
	if primary == nil {
		format.NewReader(r, 0).Next()
	}
	tb.Cleanup(func() { w.Close(); r.Close() })
	return w, r
}

// ship sends stream reps times from w and reads it all at r, and returns
// how long that took and the checkpoint bytes shipped.
func ship(tb testing.TB, w, r net.Conn, stream [][]byte, reps int) (time.Duration, int64) {
	tb.Helper()
	var total int64
	for _, ck := range stream {
		total += int64(len(ck))
	}
	total *= int64(reps)
	done := make(chan error, 1)
	go func() {
		rd := format.NewReader(r, 0)
		for range reps * len(stream) {
			if _, _, err := rd.Next(); err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	start := time.Now()
	for range reps {
		for _, ck := range stream {
			if err := format.WriteMessage(w, format.MsgCheckpoint, ck); err != nil {
				tb.Fatal(err)
			}
		}
	}
	if err := <-done; err != nil {
		tb.Fatal(err)
	}
	return time.Since(start), total
}

func benchIdentities(tb testing.TB) (primary, backup *mtls.Identity) {
	ca, err := mtls.NewCA("bench CA", time.Hour)
	if err != nil {
		tb.Fatal(err)
	}
	if primary, err = ca.Identity("primary"); err != nil {
		tb.Fatal(err)
	}
	if backup, err = ca.Identity("backup"); err != nil {
		tb.Fatal(err)
	}
	return primary, backup
}

// BenchmarkShip is the shipping throughput of checkpoint mode's stream on
// each transport: MB/s is checkpoint bytes per second, sender to reader.
func BenchmarkShip(b *testing.B) {
	primary, backup := benchIdentities(b)
	for _, change := range []string{"few", "random"} {
		stream := shipStream(b, change)
		for _, tr := range []string{"plain", "tls"} {
			b.Run(fmt.Sprintf("change=%s/transport=%s", change, tr), func(b *testing.B) {
				p, bk := primary, backup
				if tr == "plain" {
					p, bk = nil, nil
				}
				w, r := link(b, p, bk)
				ship(b, w, r, stream, 1) // warm up
				b.ResetTimer()
				_, total := ship(b, w, r, stream, b.N)
				b.SetBytes(total / int64(b.N))
			})
		}
	}
}

// BenchmarkShipTLSOverPlain ships the same stream over both transports in
// turn, in the same run, b.N times each, and reports each one's MB/s and
// their ratio (tls/plain: 1 is free, 0.5 halves the throughput), and the
// CPU time both ends spent per MB shipped (the process's, sender and
// reader together): on a loaded host the wall-clock rates move with the
// load, the CPU cost much less.
func BenchmarkShipTLSOverPlain(b *testing.B) {
	primary, backup := benchIdentities(b)
	for _, change := range []string{"few", "random"} {
		stream := shipStream(b, change)
		b.Run("change="+change, func(b *testing.B) {
			pw, pr := link(b, nil, nil)
			tw, tr := link(b, primary, backup)
			ship(b, pw, pr, stream, 1)
			ship(b, tw, tr, stream, 1)
			var wall, cpu [2]time.Duration // plain, tls
			var bytes int64
			for range b.N {
				for i, c := range [2][2]net.Conn{{pw, pr}, {tw, tr}} {
					c0 := cpuTime()
					d, n := ship(b, c[0], c[1], stream, 1)
					cpu[i] += cpuTime() - c0
					wall[i] += d
					if i == 0 {
						bytes += n
					}
				}
			}
			mb := float64(bytes) / 1e6
			b.ReportMetric(mb/wall[0].Seconds(), "plain-MB/s")
			b.ReportMetric(mb/wall[1].Seconds(), "tls-MB/s")
			b.ReportMetric(wall[0].Seconds()/wall[1].Seconds(), "tls/plain")
			b.ReportMetric(float64(cpu[0].Microseconds())/mb, "plain-cpu-µs/MB")
			b.ReportMetric(float64(cpu[1].Microseconds())/mb, "tls-cpu-µs/MB")
			b.ReportMetric(mb/float64(b.N)/float64(benchEpochs), "MB/checkpoint")
		})
	}
}

// cpuTime is the CPU time this process has used (user and system).
func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
