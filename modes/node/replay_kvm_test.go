package node_test

import (
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/ftckpt/ftckpt/modes/node"
	"github.com/ftckpt/ftckpt/modes/node/nodetest"
	"github.com/ftckpt/ftckpt/vmm/vmmtest"
)

// TestKVMReplayBackupStaysInStepUnderLoad: a client keeping four requests
// outstanding has the kv guest take receive interrupts as it returns from
// the previous one, at an IRET whose window kvm-pvm reports only at its
// next exit, wherever that is. The backup replays 8 s of it without
// diverging: the primary names such a stop by its signature, and the
// backup asks for no windows (before, here, about one divergence and full
// resynchronisation every 3 s).
func TestKVMReplayBackupStaysInStepUnderLoad(t *testing.T) {
	vmmtest.RequireKVM(t)
	o := nodetest.Options(t, node.ModeReplay, node.MachineKVM, "kv")
	p := nodetest.Start(t, o)
	p.WaitInSync()
	conn, err := net.Dial("udp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	buf := make([]byte, 2048)
	replies := 0
	for end := time.Now().Add(8 * time.Second); time.Now().Before(end); {
		for i := range 4 {
			fmt.Fprintf(conn, "INCR k%d", i)
		}
		conn.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
		for {
			if _, err := conn.Read(buf); err != nil {
				break
			}
			replies++
		}
	}
	stats := p.Backup.Parts().ReplayBackup.Stats
	if d := stats.Divergences.Load(); d != 0 {
		t.Fatalf("the backup diverged %d times in 8 s (%d replies; %s)", d, replies, stats.BackupLine())
	}
	if replies == 0 {
		t.Fatal("no reply in 8 s")
	}
	t.Logf("%d replies, backup: %s", replies, stats.BackupLine())
}
