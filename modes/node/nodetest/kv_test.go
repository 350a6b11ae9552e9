package nodetest

import (
	"testing"

	"github.com/ftckpt/ftckpt/modes/node"
)

// The kv client's judge, on replies made up as the kv guest makes them for
// a client incrementing a, b, c in turn: it accepts one machine's, in
// each mode, and rejects what two machines, or a lost update, would say.
func TestKVClientJudge(t *testing.T) {
	for _, tc := range []struct {
		name    string
		mode    node.Mode
		replies []string
		ok      bool
	}{
		{"one machine", node.ModeReplay, []string{"1 VALUE 1", "2 VALUE 1", "3 VALUE 1", "4 VALUE 2"}, true},
		{"replay repeats at the boundary", node.ModeReplay, []string{"1 VALUE 1", "2 VALUE 1", "2 VALUE 1", "3 VALUE 1"}, true},
		{"a repeat with another content", node.ModeReplay, []string{"1 VALUE 1", "2 VALUE 1", "2 VALUE 2"}, false},
		{"replay loses a reply", node.ModeReplay, []string{"1 VALUE 1", "3 VALUE 1"}, false},
		{"checkpoint repeats a reply", node.ModeCheckpoint, []string{"1 VALUE 1", "2 VALUE 1", "2 VALUE 1"}, false},
		// b's first execution's reply died with the primary; resent, it
		// ran again on the backup.
		{"checkpoint loses a reply", node.ModeCheckpoint, []string{"1 VALUE 1", "3 VALUE 2", "4 VALUE 1"}, true},
		// a's request, resent before the guest answered, ran twice; the
		// second reply died with the primary at the failover that came
		// while b's was in flight; a's value shows it when a comes round.
		{"checkpoint loses the reply of a request that ran twice", node.ModeCheckpoint, []string{"1 VALUE 1", "3 VALUE 1", "4 VALUE 1", "5 VALUE 3"}, true},
		{"a skip larger than the replies lost", node.ModeCheckpoint, []string{"1 VALUE 1", "3 VALUE 1", "4 VALUE 1", "5 VALUE 4"}, false},
		{"an update skipped", node.ModeCheckpoint, []string{"1 VALUE 1", "2 VALUE 2"}, false},
		{"an update lost", node.ModeReplay, []string{"1 VALUE 1", "2 VALUE 1", "3 VALUE 1", "4 VALUE 1"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := &KVClient{lossy: tc.mode == node.ModeCheckpoint, repeats: tc.mode == node.ModeReplay,
				bySeq: map[uint64]string{}, values: map[string]uint64{}}
			var err error
			for _, r := range tc.replies {
				key := c.key()
				var answered bool
				if answered, err = c.judge(key, r); err != nil {
					break
				}
				if answered {
					c.prevKey, c.prevRetried, c.sent = key, false, c.sent+1
				}
			}
			switch {
			case tc.ok && err != nil:
				t.Fatal(err)
			case !tc.ok && err == nil:
				t.Fatalf("accepted %q", tc.replies)
			case !tc.ok:
				t.Logf("rejected: %v", err)
			}
		})
	}
}
