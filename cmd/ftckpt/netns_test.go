package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ftckpt/ftckpt/modes/node"
	"github.com/ftckpt/ftckpt/modes/node/nodetest"
	"github.com/ftckpt/ftckpt/vmm/vmmtest"
	"github.com/ftckpt/ftckpt/witness"
	"golang.org/x/sys/unix"
)

// lan makes a namespace per host, each with eth0 at 10.78.0.(i+1)/24 on
// one bridge (in a namespace of its own): hosts on a LAN, any of which
// the test can cut off (cut(i) brings its eth0 down). They are removed
// when the test ends; the test skips where namespaces cannot be made.
func lan(t *testing.T, hosts int) (names []string, cut func(i int)) {
	t.Helper()
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("needs ip (iproute2) for network namespaces")
	}
	ip := func(args ...string) error {
		out, err := exec.Command("ip", args...).CombinedOutput()
		if err != nil {
			return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
		return nil
	}
	switchNS := fmt.Sprintf("ftck%d-lan", os.Getpid())
	if err := ip("netns", "add", switchNS); err != nil {
		t.Skipf("needs root and network namespaces: %v", err)
	}
	t.Cleanup(func() { ip("netns", "del", switchNS) })
	must := func(args ...string) {
		t.Helper()
		if err := ip(args...); err != nil {
			t.Fatal(err)
		}
	}
	must("-n", switchNS, "link", "add", "br0", "type", "bridge")
	must("-n", switchNS, "link", "set", "br0", "up")
	for i := range hosts {
		ns := fmt.Sprintf("ftck%d-h%d", os.Getpid(), i)
		must("netns", "add", ns)
		t.Cleanup(func() { ip("netns", "del", ns) })
		port := fmt.Sprintf("p%d", i)
		must("link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name", port, "netns", switchNS)
		must("-n", switchNS, "link", "set", port, "master", "br0")
		must("-n", switchNS, "link", "set", port, "up")
		must("-n", ns, "addr", "add", fmt.Sprintf("10.78.0.%d/24", i+1), "dev", "eth0")
		must("-n", ns, "link", "set", "eth0", "up")
		must("-n", ns, "link", "set", "lo", "up")
		names = append(names, ns)
	}
	return names, func(i int) { must("-n", names[i], "link", "set", "eth0", "down") }
}

// ftckptIn starts the test binary as ftckpt inside network namespace ns.
func ftckptIn(t *testing.T, ns string, out *syncBuffer, args ...string) *exec.Cmd {
	t.Helper()
	return startAsMain(t, out, exec.Command("ip", append([]string{"netns", "exec", ns, os.Args[0]}, args...)...))
}

// TestPartitionBetweenHosts runs a primary and a backup on two hosts
// (network namespaces on a bridge, each with its own disk image: mirrored
// disks; the witness a lease file they share) and cuts the link between them: each side finds the
// other silent and asks the witness for the next generation. Exactly one
// goes on (the primary alone, or the backup live); the other stops asking
// to run; the lease holds generation 2. In both modes.
func TestPartitionBetweenHosts(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: a multi-process test")
	}
	for _, tc := range []struct {
		mode             []string
		ready            *regexp.Regexp // the backup holds the guest's state
		alone            string         // the primary went on without its backup
		primaryLostLease string         // the primary lost the contest: it halts
		backupLostLease  string         // the backup lost the contest
	}{
		{[]string{"--mode", "replay"}, regexp.MustCompile("full checkpoint applied"), "backup lost; continuing alone", "primary must halt", "not going live"},
		{[]string{"--mode", "checkpoint", "--epoch", "5ms"}, regexp.MustCompile(`\(acked [1-9]`), "running alone", "primary must halt", "another candidate won"},
	} {
		t.Run(tc.mode[1], func(t *testing.T) {
			hosts, cut := lan(t, 2)
			hostA, hostB := hosts[0], hosts[1]
			dir := t.TempDir()
			lease := filepath.Join(dir, "lease")
			common := append(tc.mode, "--machine", "sim", "--guest", "kv", "--memory", "1M",
				"--net", "udp:127.0.0.1:7777", "--disk-size", "1M",
				"--arbiter", "disk:"+lease, "--status-every", "20ms",
				"--heartbeat", "20ms", "--failure-timeout", "300ms")
			var bout, pout syncBuffer
			t.Cleanup(func() {
				if t.Failed() {
					t.Logf("primary:\n%s\nbackup:\n%s", pout.String(), bout.String())
				}
			})
			certs := clusterCerts(t, "10.78.0.1", "10.78.0.2")
			ftckptIn(t, hostB, &bout, slices.Concat([]string{"--role", "backup", "--listen", "10.78.0.2:7100", "--disk", filepath.Join(dir, "backup.img")}, common, hostTLS(certs, "10.78.0.2"))...)
			waitFor(t, &bout, backupReadyPrefix)
			primary := ftckptIn(t, hostA, &pout, slices.Concat([]string{"--role", "primary", "--peer", "10.78.0.2:7100", "--disk", filepath.Join(dir, "primary.img")}, common, hostTLS(certs, "10.78.0.1"))...)
			vmmtest.WaitUntil(t, fmt.Sprintf("the backup to hold the guest's state (%v)", tc.ready), func() bool {
				return tc.ready.MatchString(bout.String()) || tc.ready.MatchString(pout.String())
			})

			cut(0) // the link between them: the primary's host's
			// Each side decides within the failure timeout and a contest.
			deadline := time.Now().Add(20 * time.Second)
			for {
				aloneP := strings.Contains(pout.String(), tc.alone)
				liveB := strings.Contains(bout.String(), "live as primary")
				lostP := strings.Contains(pout.String(), tc.primaryLostLease)
				lostB := strings.Contains(bout.String(), tc.backupLostLease)
				if (aloneP || lostP) && (liveB || lostB) {
					if aloneP == liveB || aloneP != lostB || liveB != lostP {
						t.Fatalf("after the cut: primary alone %v, lost %v; backup live %v, lost %v: want exactly one to go on", aloneP, lostP, liveB, lostB)
					}
					if lostP {
						if err := primary.Wait(); err == nil {
							t.Fatal("the primary that lost the contest exited cleanly")
						}
					}
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("no decision 20 s after the cut: primary alone %v, lost %v; backup live %v, lost %v", aloneP, lostP, liveB, lostB)
				}
				time.Sleep(10 * time.Millisecond)
			}
			arb, err := witness.Open("disk:" + lease)
			if err != nil {
				t.Fatal(err)
			}
			defer arb.Close()
			if cur, err := arb.Current(context.Background()); err != nil || cur.Generation != 2 {
				t.Fatalf("the lease holds %+v (%v), want generation 2: one contest, one winner", cur, err)
			}
		})
	}
}

// TestIsolatedHostRaftWitness: a primary, its backup and a three-node raft
// witness on three hosts of a LAN; one of the first two hosts is cut off
// from the others. The paper's rule, in both modes: if it is the
// primary's, the backup (still reaching a majority of the witness) wins
// generation 2 and goes live, and the primary, reaching neither, halts; if
// it is the backup's, the primary wins generation 2 and goes on alone, and
// the backup, unable to ask the witness, waits and never goes live.
func TestIsolatedHostRaftWitness(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: a multi-process test")
	}
	for _, mode := range []struct {
		flags []string
		ready *regexp.Regexp // the backup holds the guest's state
		alone string         // the primary went on without its backup
	}{
		{[]string{"--mode", "replay"}, regexp.MustCompile("full checkpoint applied"), "backup lost; continuing alone"},
		{[]string{"--mode", "checkpoint", "--epoch", "5ms"}, regexp.MustCompile(`\(acked [1-9]`), "running alone"},
	} {
		for _, isolate := range []string{"primary", "backup"} {
			t.Run(mode.flags[1]+"/"+isolate, func(t *testing.T) {
				hosts, cut := lan(t, 3)
				primaryHost, backupHost, witnessHost := hosts[0], hosts[1], hosts[2]
				dir := t.TempDir()
				peers := "w1=10.78.0.3:7000,w2=10.78.0.3:7002,w3=10.78.0.3:7004"
				arbiter := "raft://10.78.0.3:7000,10.78.0.3:7002,10.78.0.3:7004"
				var wout syncBuffer
				certs := clusterCerts(t, "10.78.0.1", "10.78.0.2", "10.78.0.3")
				for i := 1; i <= 3; i++ {
					ftckptIn(t, witnessHost, &wout, append([]string{"witness", "--id", fmt.Sprintf("w%d", i),
						"--peers", peers, "--data-dir", filepath.Join(dir, fmt.Sprintf("w%d", i))}, hostTLS(certs, "10.78.0.3")...)...)
				}
				common := append(slices.Clone(mode.flags), "--machine", "sim", "--guest", "kv", "--memory", "1M",
					"--net", "udp:127.0.0.1:7777", "--disk-size", "1M",
					"--arbiter", arbiter, "--status-every", "20ms", "--heartbeat", "20ms", "--failure-timeout", "300ms")
				var bout, pout syncBuffer
				t.Cleanup(func() {
					if t.Failed() {
						t.Logf("primary:\n%s\nbackup:\n%s\nwitness:\n%s", pout.String(), bout.String(), wout.String())
					}
				})
				ftckptIn(t, backupHost, &bout, slices.Concat([]string{"--role", "backup", "--listen", "10.78.0.2:7100", "--disk", filepath.Join(dir, "backup.img")}, common, hostTLS(certs, "10.78.0.2"))...)
				waitFor(t, &bout, backupReadyPrefix)
				primary := ftckptIn(t, primaryHost, &pout, slices.Concat([]string{"--role", "primary", "--peer", "10.78.0.2:7100", "--disk", filepath.Join(dir, "primary.img")}, common, hostTLS(certs, "10.78.0.1"))...)
				vmmtest.WaitUntil(t, fmt.Sprintf("the backup to hold the guest's state (%v)", mode.ready), func() bool {
					return mode.ready.MatchString(bout.String()) || mode.ready.MatchString(pout.String())
				})

				winner := "backup-"
				if isolate == "primary" {
					cut(0)
					waitFor(t, &bout, "live as primary")
					exited := make(chan error, 1)
					go func() { exited <- primary.Wait() }()
					select {
					case err := <-exited:
						if err == nil || !strings.Contains(pout.String(), "primary must halt") {
							t.Fatalf("the isolated primary exited with %v and did not say it must halt", err)
						}
					case <-time.After(30 * time.Second):
						t.Fatal("the isolated primary is still running 30 s after its host was cut off")
					}
				} else {
					cut(1)
					winner = "primary-"
					waitFor(t, &pout, mode.alone)
					time.Sleep(2 * time.Second) // the backup's failure timeout many times over
					if strings.Contains(bout.String(), "live as primary") {
						t.Fatal("the isolated backup went live without the witness")
					}
				}
				status := exec.Command("ip", append([]string{"netns", "exec", hosts[2], os.Args[0], "witness", "status", "--arbiter", arbiter}, hostTLS(certs, "10.78.0.3")...)...)
				status.Env = append(os.Environ(), "FTCKPT_TEST_AS_MAIN=1")
				out, err := status.CombinedOutput()
				if err != nil || !strings.HasPrefix(string(out), "generation 2 held by "+winner) {
					t.Fatalf("witness status: %q, %v; want generation 2 held by the %s", out, err, strings.TrimSuffix(winner, "-"))
				}
			})
		}
	}
}

// udpIn is a UDP socket in network namespace ns (made by lan), connected
// to addr: its socket is opened by a thread that enters ns for that moment.
func udpIn(t *testing.T, ns, addr string) *net.UDPConn {
	t.Helper()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	here, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	defer here.Close()
	there, err := os.Open(filepath.Join("/var/run/netns", ns))
	if err != nil {
		t.Fatal(err)
	}
	defer there.Close()
	if err := unix.Setns(int(there.Fd()), unix.CLONE_NEWNET); err != nil {
		t.Fatalf("entering %s: %v", ns, err)
	}
	ua, err := net.ResolveUDPAddr("udp", addr)
	if err == nil {
		var conn *net.UDPConn
		if conn, err = net.DialUDP("udp", nil, ua); err == nil {
			t.Cleanup(func() { conn.Close() })
			if err := unix.Setns(int(here.Fd()), unix.CLONE_NEWNET); err != nil {
				panic(fmt.Sprintf("leaving %s: %v", ns, err)) // this thread must not go on in ns
			}
			return conn
		}
	}
	if err := unix.Setns(int(here.Fd()), unix.CLONE_NEWNET); err != nil {
		panic(fmt.Sprintf("leaving %s: %v", ns, err))
	}
	t.Fatal(err)
	return nil
}

// TestJoinAcrossHostsMirroredDisks: a primary on one host runs alone, a
// backup on another joins it (memory and disk by pre-copy: each host has
// its own image, nothing is shared but the witness's lease), the primary
// is killed (SIGKILL) and the backup goes live. A client on a third host
// increments keys throughout, sending to the primary's address and then to
// the backup's: its replies stay one machine's, and the journal on the
// backup's image holds every update a reply reported. In both modes.
func TestJoinAcrossHostsMirroredDisks(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: a multi-process test")
	}
	for _, tc := range []struct {
		mode      []string
		protected string
		lossy     bool
	}{
		{[]string{"--mode", "replay"}, "full checkpoint applied", false},
		{[]string{"--mode", "checkpoint", "--epoch", "5ms"}, "full sync committed", true},
	} {
		t.Run(tc.mode[1], func(t *testing.T) {
			hosts, _ := lan(t, 3)
			hostA, hostB, client := hosts[0], hosts[1], hosts[2]
			dir := t.TempDir()
			common := slices.Concat(tc.mode, []string{"--machine", "sim", "--guest", "kv", "--memory", "1M",
				"--param", "journal=1000", "--param", "flush=1", "--disk-size", "1M",
				"--arbiter", "disk:" + filepath.Join(dir, "lease"), "--status-every", "0",
				"--heartbeat", "20ms", "--failure-timeout", "300ms"})
			var aout, bout syncBuffer
			t.Cleanup(func() {
				if t.Failed() {
					t.Logf("A:\n%s\nB:\n%s", aout.String(), bout.String())
				}
			})
			certs := clusterCerts(t, "10.78.0.1", "10.78.0.2")
			primary := ftckptIn(t, hostA, &aout, slices.Concat([]string{"--role", "primary", "--accept-backups", "10.78.0.1:7200",
				"--net", "udp:10.78.0.1:7777", "--disk", filepath.Join(dir, "a.img")}, common, hostTLS(certs, "10.78.0.1"))...)
			waitFor(t, &aout, "accepting backups")
			c := newKVClient(udpIn(t, client, "10.78.0.1:7777"), tc.lossy)
			for range 5 {
				c.incr(t, 20*time.Second) // alone
			}
			ftckptIn(t, hostB, &bout, slices.Concat([]string{"--role", "backup", "--join", "10.78.0.1:7200",
				"--net", "udp:10.78.0.2:7777", "--disk", filepath.Join(dir, "b.img")}, common, hostTLS(certs, "10.78.0.2"))...)
			waitFor(t, &bout, tc.protected)
			for range 5 {
				c.incr(t, 20*time.Second)
			}
			primary.Process.Signal(syscall.SIGKILL) // ip netns exec became ftckpt
			waitFor(t, &bout, "live as primary")
			c.conn = udpIn(t, client, "10.78.0.2:7777")
			c.resend = 100 * time.Millisecond
			for range 5 {
				c.incr(t, 20*time.Second)
			}
			nodetest.CheckJournal(t, filepath.Join(dir, "b.img"), node.MachineSim, c.updates())
		})
	}
}
