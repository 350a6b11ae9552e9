package main

import (
	"context"
	"encoding/json"
	"regexp"
	"strings"
	"testing"

	"github.com/ftckpt/ftckpt/modes/node"
	"github.com/ftckpt/ftckpt/modes/node/nodetest"
	"github.com/ftckpt/ftckpt/vmm/vmmtest"
)

// TestCtlAndStatusOfAPair drives ftckpt ctl and ftckpt status against a
// running checkpoint-mode pair of the software machine (in this process):
// the primary's socket found in the default directory, requests good and
// bad, and the cluster table from the witness, a control socket, a
// metrics URL and a node that is not there.
func TestCtlAndStatusOfAPair(t *testing.T) {
	t.Setenv("XDG_RUNTIME_DIR", t.TempDir())
	o := nodetest.Options(t, node.ModeCheckpoint, node.MachineSim, "kv")
	o.Control, o.Metrics = node.DefaultControlPath(node.RolePrimary), "127.0.0.1:0"
	p := nodetest.Start(t, o)
	p.WaitInSync()
	ctx := context.Background()
	cli := func(args ...string) (string, error) { return witnessCLI(ctx, args...) }

	var out string
	vmmtest.WaitUntil(t, "ftckpt ctl status to say in sync", func() bool {
		var err error
		if out, err = cli("ctl", "status"); err != nil {
			t.Fatal(err)
		}
		return strings.Contains(out, "role        primary, generation 1, in sync")
	})
	t.Logf("ftckpt ctl status:\n%s", out)
	js, err := cli("ctl", "--control", o.Control, "--json", "status")
	if err != nil {
		t.Fatal(err)
	}
	var resp node.Response
	if err := json.Unmarshal([]byte(js), &resp); err != nil || resp.Status == nil || resp.Status.Role != "primary" {
		t.Fatalf("ftckpt ctl --json status: %v\n%s", err, js)
	}
	for _, tc := range []struct {
		args []string
		want string
		ok   bool
	}{
		{[]string{"ctl", "set", "epoch", "10ms"}, "epoch 10ms from the next epoch", true},
		{[]string{"ctl", "set", "epoch", "auto"}, "epoch auto (5ms to 500ms)", true},
		{[]string{"ctl", "set", "epoch"}, "set takes a name and a value", false},
		{[]string{"ctl", "set", "epoch", "fast"}, "want a duration from 100µs to 1m", false},
		{[]string{"ctl", "pause", "now"}, "pause takes no arguments", false},
		{[]string{"ctl", "reboot"}, `op "reboot": want status, set, pause, resume, detach-backup or failover`, false},
		{[]string{"ctl", "--control", o.Control + ".backup", "failover"}, "this node is not a primary", false},
		{[]string{"ctl", "--backup", "status"}, "no backup on this host answers", false},
		{[]string{"ctl", "--control", o.Control + ".backup", "pause"}, "this node is a backup", false},
		{[]string{"ctl", "--control", o.Control + ".nothing", "status"}, "no node answers at", false},
		{[]string{"ctl", "pause"}, "guest paused", true},
		{[]string{"ctl", "resume"}, "guest running", true},
	} {
		out, err := cli(tc.args...)
		got := out
		if err != nil {
			got = err.Error()
		}
		if (err == nil) != tc.ok || !strings.Contains(got, tc.want) {
			t.Errorf("ftckpt %s: %q (err %v), want %q", strings.Join(tc.args, " "), out, err, tc.want)
		}
	}

	out, err = cli("status", "--arbiter", o.Arbiter, "--node", o.Control, "--node", "http://"+p.Backup.MetricsAddr(), "--node", o.Control+".nothing")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("ftckpt status:\n%s", out)
	oneSpace := regexp.MustCompile(" +").ReplaceAllString(out, " ")
	for _, want := range []string{"generation 1 held by primary-", "NODE MODE ROLE GEN IN SYNC LAG HEALTH",
		o.Control + " checkpoint primary 1 yes [0-9]+ epochs ok",
		"http://" + p.Backup.MetricsAddr() + " checkpoint backup - yes holds epoch [0-9]+ ok", "DOWN: no node answers"} {
		if !regexp.MustCompile(regexp.QuoteMeta(want)).MatchString(oneSpace) && !regexp.MustCompile(want).MatchString(oneSpace) {
			t.Errorf("ftckpt status lacks %q", want)
		}
	}
	if out, err = cli("status", "--arbiter", ""); err != nil || !strings.Contains(out, o.Control) {
		t.Errorf("ftckpt status of this host's nodes: %v\n%s", err, out)
	}
}
