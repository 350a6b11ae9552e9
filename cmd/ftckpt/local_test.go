package main

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/ftckpt/ftckpt/vmm/vmmtest"
)

// TestLocalRunEndsOnSIGTERM: a local run (the backup a child process) that
// gets SIGTERM ends, both processes, whatever the backup was doing — even
// having gone live when the primary stopped. It once hung forever: the
// child, live or waiting for a primary, ignored its SIGTERM, and the parent
// waited on it without limit. The bound only catches the hang.
func TestLocalRunEndsOnSIGTERM(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: a multi-process test")
	}
	for _, mode := range []string{"replay", "checkpoint"} {
		t.Run(mode, func(t *testing.T) {
			dir := t.TempDir()
			var out syncBuffer
			local := exec.Command(os.Args[0], "--mode", mode, "--guest", "kv", "--memory", "16M",
				"--net", "udp:"+freePort(t, "udp"), "--disk", "none",
				"--arbiter", "disk:"+filepath.Join(dir, "lease"), "--status-every", "0")
			local.Env = append(os.Environ(), "FTCKPT_TEST_AS_MAIN=1")
			local.Stdout, local.Stderr = &out, &out
			local.WaitDelay = time.Second // the backup may hold the output pipe
			if err := local.Start(); err != nil {
				t.Fatal(err)
			}
			exited := make(chan error, 1)
			go func() { exited <- local.Wait() }()
			t.Cleanup(func() { local.Process.Kill(); <-exited })
			// A checkpoint-mode local run starts its backup to join it
			// (--respawn); a replay-mode one, to listen.
			started := regexp.MustCompile(`(?:backup process is listening|started a backup process) pid=(\d+) `)
			waitForMatch(t, &out, started, 1)
			m := started.FindStringSubmatch(out.String())
			if m == nil {
				t.Fatalf("no backup pid in:\n%s", out.String())
			}
			child, _ := strconv.Atoi(m[1])
			t.Cleanup(func() { syscall.Kill(child, syscall.SIGKILL) })
			waitFor(t, &out, "primary ")
			time.Sleep(300 * time.Millisecond) // replicating for a while
			local.Process.Signal(syscall.SIGTERM)
			select {
			case err := <-exited:
				exited <- err // for the cleanup
			case <-time.After(60 * time.Second):
				t.Fatalf("the local run did not end within a minute of SIGTERM:\n%s", out.String())
			}
			vmmtest.WaitUntil(t, fmt.Sprintf("the backup process %d to end with the local run", child), func() bool {
				return errors.Is(syscall.Kill(child, 0), syscall.ESRCH)
			})
		})
	}
}
