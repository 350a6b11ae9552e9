package node_test

import (
	"context"
	"log/slog"
	"regexp"
	"strings"
	"testing"

	"github.com/ftckpt/ftckpt/modes/node"
	"github.com/ftckpt/ftckpt/modes/node/nodetest"
	"github.com/ftckpt/ftckpt/vmm/vmmtest"
)

// syncBuffer is output written while the test reads it.
type syncBuffer = vmmtest.Console

// TestProgressLinesOfAFullSync: a checkpoint primary whose status writer
// is not a terminal writes a line as each round of its full sync begins,
// and one when it is done.
func TestProgressLinesOfAFullSync(t *testing.T) {
	o := nodetest.Options(t, node.ModeCheckpoint, node.MachineSim, "kv")
	out := &syncBuffer{}
	o.Status = out
	p := nodetest.Start(t, o)
	p.WaitInSync()
	vmmtest.WaitUntil(t, "the full sync's last line", func() bool { return strings.Contains(out.String(), "full sync: done in") })
	t.Logf("progress:\n%s", out)
	for _, want := range []string{
		`full sync: round 1, 256 pages \(1\.0 MB\) while the guest runs\n`,
		`full sync: round [0-9]+, the commit: [0-9]+ pages .* with the guest paused\n`,
	} {
		if !regexp.MustCompile(want).MatchString(out.String()) {
			t.Errorf("the progress lacks %q", want)
		}
	}
	if strings.Contains(out.String(), "\r") {
		t.Error("a bar was drawn on a writer that is not a terminal")
	}
}

// TestProgressLinesOfAPrecopy: a replay primary running alone, whose
// status writer is not a terminal, says when the pre-copy to a backup
// that joins it is done.
func TestProgressLinesOfAPrecopy(t *testing.T) {
	o := nodetest.Options(t, node.ModeReplay, node.MachineSim, "kv")
	ctx, cancel := context.WithCancel(context.Background())
	out, plog := &syncBuffer{}, &syncBuffer{}
	po := o
	po.Role, po.AcceptBackups, po.Status = node.RolePrimary, "127.0.0.1:0", out
	po.Log = slog.New(slog.NewTextHandler(plog, nil))
	prim, err := node.Start(ctx, po)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { cancel(); prim.Wait() }()
	accept := acceptAddr(t, plog)
	bo := o
	bo.Role, bo.Join, bo.Log = node.RoleBackup, accept, slog.New(slog.DiscardHandler)
	back, err := node.Start(ctx, bo)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { cancel(); back.Wait() }()
	vmmtest.WaitUntil(t, "the pre-copy's last line", func() bool { return strings.Contains(out.String(), "pre-copy: done") })
	t.Logf("progress:\n%s", out)
}

// acceptAddr waits for a primary logging in text to log (into plog) where
// it accepts backups, and returns that address.
func acceptAddr(t *testing.T, plog *syncBuffer) string {
	t.Helper()
	var accept string
	re := regexp.MustCompile(`msg="accepting backups" addr=(\S+)`)
	vmmtest.WaitUntil(t, "the primary to accept backups", func() bool {
		m := re.FindStringSubmatch(plog.String())
		if m != nil {
			accept = m[1]
		}
		return m != nil
	})
	return accept
}
