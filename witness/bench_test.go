package witness

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"testing"
)

// BenchmarkAcquire measures one winning Acquire per arbiter, each beside the
// floor it cannot beat, measured in the same run: for the disk lease one
// 512-byte pwrite+fsync, for the raft witness one HTTP round trip on
// loopback (a commit adds a replicated, fsynced log append on a quorum).
func BenchmarkAcquire(b *testing.B) {
	ctx := context.Background()
	acquireLoop := func(b *testing.B, a Arbiter) {
		cur, err := a.Current(ctx)
		if err != nil {
			b.Fatal(err)
		}
		b.ResetTimer()
		for i := range b.N {
			if _, err := a.Acquire(ctx, cur.Generation+uint64(i)+1, "bench"); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.Run("memory", func(b *testing.B) { acquireLoop(b, NewMemory()) })

	b.Run("floor=pwrite+fsync", func(b *testing.B) {
		f, err := os.Create(filepath.Join(b.TempDir(), "floor"))
		if err != nil {
			b.Fatal(err)
		}
		defer f.Close()
		block := make([]byte, leaseBlockSize)
		for i := range b.N {
			block[0] = byte(i)
			if _, err := f.WriteAt(block, 0); err != nil {
				b.Fatal(err)
			}
			if err := f.Sync(); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("disk-lease-file", func(b *testing.B) {
		l, err := OpenLeaseFile(filepath.Join(b.TempDir(), "lease"))
		if err != nil {
			b.Fatal(err)
		}
		acquireLoop(b, l)
	})

	b.Run("floor=http-loopback", func(b *testing.B) {
		ln := listenLoopback(b)
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			io.Copy(io.Discard, r.Body)
			w.Write([]byte(`{"version":1,"status":"won"}`))
		})}
		go srv.Serve(ln)
		defer srv.Close()
		cl := &http.Client{}
		url := "http://" + ln.Addr().String() + pathAcquire
		body := []byte(`{"version":1,"generation":1,"owner":"bench"}`)
		for range b.N {
			resp, err := cl.Post(url, "application/json", bytes.NewReader(body))
			if err != nil {
				b.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
	})
	b.Run("raft-3-nodes-tcp-boltdb", func(b *testing.B) {
		c := startTCPCluster(b, 3)
		acquireLoop(b, c.client())
	})
}

// BenchmarkFenceCheck measures the check on every output release path.
func BenchmarkFenceCheck(b *testing.B) {
	for _, par := range []int{1, 4} {
		b.Run(fmt.Sprintf("goroutines=%d", par), func(b *testing.B) {
			f := NewFence(NewMemory(), "p")
			if _, err := f.Acquire(context.Background(), 1); err != nil {
				b.Fatal(err)
			}
			b.SetParallelism(par)
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if err := f.Check(1); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}
