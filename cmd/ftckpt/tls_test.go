package main

import (
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/ftckpt/ftckpt/checkpoint/mtls"
)

// clusterCerts makes a cluster's certificates for hosts with `ftckpt
// certs init` and returns their directory.
func clusterCerts(t *testing.T, hosts ...string) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "certs")
	if out, err := runCLI("certs", "init", dir, "--hosts", strings.Join(hosts, ",")); err != nil {
		t.Fatalf("certs init: %v\n%s", err, out)
	}
	return dir
}

// hostTLS are the flags that give host its certificate of the cluster in
// dir.
func hostTLS(dir, host string) []string {
	cert, key := mtls.HostFiles(dir, host)
	return []string{"--tls-cert", cert, "--tls-key", key, "--tls-ca", filepath.Join(dir, mtls.CACertFile)}
}

// loopbackTLS are the flags of a cluster whose processes all run here:
// one certificate, for localhost (and 127.0.0.1).
func loopbackTLS(t *testing.T) []string {
	t.Helper()
	return hostTLS(clusterCerts(t, "localhost"), "localhost")
}

// tlsIdentity loads the identity the flags name.
func tlsIdentity(t *testing.T, flags []string) *mtls.Identity {
	t.Helper()
	arg := func(name string) string { return flags[slices.Index(flags, name)+1] }
	id, err := mtls.Load(mtls.Files{Cert: arg("--tls-cert"), Key: arg("--tls-key"), CA: arg("--tls-ca")})
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// TestRunBetweenHostsNeedsTLS: a primary or a backup started with no TLS
// flags is refused, with the flags to give named; --insecure is explicit
// and cannot be mixed with them.
func TestRunBetweenHostsNeedsTLS(t *testing.T) {
	base := []string{"--mode", "replay", "--machine", "sim", "--role", "backup", "--listen", "127.0.0.1:0", "--disk", "none", "--net", "none"}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{base, "no TLS: give --tls-cert, --tls-key and --tls-ca (ftckpt certs init DIR --hosts HOST,... makes them), or --insecure"},
		{append(slices.Clone(base), "--tls-cert", "a.crt"), "--tls-key, --tls-ca missing"},
		{append(slices.Clone(base), "--tls-ca", "ca.crt", "--tls-key", "k"), "--tls-cert missing"},
		{append(slices.Clone(base), "--tls-cert", "a", "--tls-key", "b", "--tls-ca", "c", "--insecure"), "contradict"},
		{append(slices.Clone(base), "--tls-cert", "/nonexistent.crt", "--tls-key", "b", "--tls-ca", "c"), "--tls-cert: open /nonexistent.crt"},
		{[]string{"--mode", "checkpoint", "--machine", "sim", "--role", "primary", "--peer", "h:1", "--disk", "none", "--net", "none"}, "or --insecure for plain TCP"},
	} {
		_, err := runCLI(tc.args...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ftckpt %s: %v, want an error saying %q", strings.Join(tc.args, " "), err, tc.want)
		}
	}
	// The files of another cluster's host do not make an identity.
	a, b := clusterCerts(t, "hosta"), clusterCerts(t, "hostb")
	flags := append(slices.Clone(base), hostTLS(a, "hosta")...)
	flags[len(flags)-1] = filepath.Join(b, mtls.CACertFile)
	if _, err := runCLI(flags...); err == nil || !strings.Contains(err.Error(), "does not verify against the CA") {
		t.Errorf("a certificate of another CA: %v", err)
	}
	// The environment gives them too (and the config file: bindConfig).
	t.Setenv("FTCKPT_TLS_CERT", "/nonexistent/from-env.crt")
	t.Setenv("FTCKPT_TLS_KEY", "k")
	t.Setenv("FTCKPT_TLS_CA", "c")
	if _, err := runCLI(base...); err == nil || !strings.Contains(err.Error(), "from-env.crt") {
		t.Errorf("FTCKPT_TLS_* not applied: %v", err)
	}
}

func TestCertsInit(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "certs")
	out, err := runCLI("certs", "init", dir, "--hosts", "10.0.0.1,backup.example.net")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"made the CA", "10.0.0.1: --tls-cert " + filepath.Join(dir, "10.0.0.1.crt"), "backup.example.net: --tls-cert"} {
		if !strings.Contains(out, want) {
			t.Errorf("certs init said %q, lacking %q", out, want)
		}
	}
	out, err = runCLI("certs", "init", dir, "--hosts", "10.0.0.1,10.0.0.3")
	if err != nil || !strings.Contains(out, "used the CA already in") || !strings.Contains(out, "kept 10.0.0.1's certificate") || !strings.Contains(out, "10.0.0.3: --tls-cert") {
		t.Errorf("certs init again: %q, %v", out, err)
	}
	for _, host := range []string{"10.0.0.1", "backup.example.net", "10.0.0.3"} {
		tlsIdentity(t, hostTLS(dir, host))
	}
	if st, err := os.Stat(filepath.Join(dir, "ca.key")); err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("ca.key: %v, %v", st.Mode(), err)
	}
	if _, err := runCLI("certs", "init", dir, "--hosts", " , "); err == nil || !strings.Contains(err.Error(), "no host named") {
		t.Errorf("certs init with no host: %v", err)
	}
}

// TestTLSRefusalsBetweenProcesses runs real ftckpt processes: a backup of
// one cluster and, one after the other, peers it must refuse — a primary
// of another cluster, one in plain TCP, one whose name the backup does not
// accept, and a primary facing a backup in plain TCP. Each refusal is at
// the handshake and named on both sides; none reaches the engine (the
// backup keeps following its own primary, whose epochs go on being
// acknowledged).
func TestTLSRefusalsBetweenProcesses(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: a multi-process test")
	}
	home, other := clusterCerts(t, "localhost"), clusterCerts(t, "localhost")
	dir := t.TempDir()
	peer := freePort(t, "tcp")
	common := []string{"--mode", "checkpoint", "--epoch", "10ms", "--machine", "sim", "--guest", "kv", "--memory", "1M",
		"--net", "udp:" + freePort(t, "udp"), "--disk", filepath.Join(dir, "disk.img"), "--disk-size", "1M",
		"--arbiter", "disk:" + filepath.Join(dir, "lease"), "--status-every", "20ms",
		"--heartbeat", "20ms", "--failure-timeout", "2s"}
	// A stranger's own lease and disk: it shares nothing with the cluster.
	stranger := func(extra ...string) []string {
		sdir := t.TempDir()
		flags := slices.Clone(common)
		for i, f := range flags {
			switch f {
			case "--arbiter":
				flags[i+1] = "disk:" + filepath.Join(sdir, "lease")
			case "--disk":
				flags[i+1] = filepath.Join(sdir, "disk.img")
			case "--net":
				flags[i+1] = "udp:" + freePort(t, "udp")
			}
		}
		return append(append([]string{"--role", "primary", "--peer", peer}, flags...), extra...)
	}
	var bout, pout syncBuffer
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("backup:\n%s\nprimary:\n%s", bout.String(), pout.String())
		}
	})
	backup := append(append([]string{"--role", "backup", "--listen", peer, "--peer-name", "localhost"}, common...), hostTLS(home, "localhost")...)
	ftckptProcess(t, &bout, backup...)
	waitFor(t, &bout, backupReadyPrefix)
	// An image of its own (--role: mirrored disks).
	ftckptProcess(t, &pout, slices.Concat([]string{"--role", "primary", "--peer", peer}, common, []string{"--disk", filepath.Join(dir, "primary.img")}, hostTLS(home, "localhost"))...)
	acked := regexp.MustCompile(`\(acked (\d+)`)
	waitForMatch(t, &pout, acked, 1)
	// A stranger that trusts the cluster's CA too (its certificate is no
	// secret): the backup is the one to refuse it, for its certificate.
	trusting := hostTLS(other, "localhost")
	both := filepath.Join(t.TempDir(), "both-ca.crt")
	homeCA, _ := os.ReadFile(filepath.Join(home, mtls.CACertFile))
	otherCA, _ := os.ReadFile(filepath.Join(other, mtls.CACertFile))
	if err := os.WriteFile(both, append(homeCA, otherCA...), 0o644); err != nil {
		t.Fatal(err)
	}
	trusting[len(trusting)-1] = both

	for _, tc := range []struct {
		name       string
		args       []string
		wantBackup string // in the backup's log
		wantPeer   string // in the stranger's output
	}{
		{"another cluster", stranger(hostTLS(other, "localhost")...),
			"the peer refused this host (tls: bad certificate)",
			`certificate "localhost" is signed by "ftckpt cluster CA`},
		{"another cluster, trusting this one", stranger(trusting...),
			`is signed by \"ftckpt cluster CA`,
			"the peer refused this host (tls: unknown certificate authority)"},
		{"plain TCP", stranger("--insecure"),
			"the peer speaks in plain TCP: it runs with --insecure, and this host with TLS",
			"this host requires mutual TLS"},
	} {
		var sout syncBuffer
		before := len(acked.FindAllString(pout.String(), -1))
		ftckptProcess(t, &sout, tc.args...)
		waitFor(t, &bout, tc.wantBackup)
		waitFor(t, &sout, tc.wantPeer)
		// The backup still follows its primary: more epochs acknowledged.
		waitForMatch(t, &pout, acked, before+3)
		if strings.Contains(bout.String(), "primary lost") {
			t.Fatalf("%s: the backup lost its primary", tc.name)
		}
	}
	if strings.Contains(pout.String(), "running alone") {
		t.Fatal("the primary lost its backup to a stranger")
	}
	if !strings.Contains(pout.String(), "generation=1") {
		t.Fatal("the primary is not generation 1")
	}
}

// TestTLSPeerNamesAndPlainBackup: a backup that accepts only certain names
// refuses a primary of its own cluster with another name, and a TLS
// primary facing a backup in plain TCP is refused: each side says why.
func TestTLSPeerNamesAndPlainBackup(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: a multi-process test")
	}
	certs := clusterCerts(t, "localhost")
	for _, tc := range []struct {
		name         string
		backup, prim []string
		wantBackup   string
		wantPrimary  string
	}{
		{"name not accepted", append(hostTLS(certs, "localhost"), "--peer-name", "primary-a"), hostTLS(certs, "localhost"),
			"none of them a name this host accepts (--peer-name primary-a)", "the peer refused this host (tls: bad certificate)"},
		{"plain backup", []string{"--insecure"}, hostTLS(certs, "localhost"),
			"the peer speaks TLS, and this host runs with --insecure", "it refused this host, or it runs with --insecure"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			peer := freePort(t, "tcp")
			common := []string{"--mode", "replay", "--machine", "sim", "--guest", "kv", "--memory", "1M",
				"--net", "udp:" + freePort(t, "udp"), "--disk", filepath.Join(dir, "disk.img"), "--disk-size", "1M",
				"--arbiter", "disk:" + filepath.Join(dir, "lease"), "--status-every", "0"}
			var bout, pout syncBuffer
			t.Cleanup(func() {
				if t.Failed() {
					t.Logf("backup:\n%s\nprimary:\n%s", bout.String(), pout.String())
				}
			})
			ftckptProcess(t, &bout, slices.Concat([]string{"--role", "backup", "--listen", peer}, common, tc.backup)...)
			waitFor(t, &bout, backupReadyPrefix)
			// An image of its own (--role: mirrored disks).
			primary := ftckptProcess(t, &pout, slices.Concat([]string{"--role", "primary", "--peer", peer}, common, []string{"--disk", filepath.Join(dir, "primary.img")}, tc.prim)...)
			if err := primary.Wait(); err == nil {
				t.Fatal("the refused primary exited cleanly")
			}
			if !strings.Contains(pout.String(), tc.wantPrimary) {
				t.Errorf("the primary does not say %q", tc.wantPrimary)
			}
			waitFor(t, &bout, tc.wantBackup)
			if strings.Contains(bout.String(), "full checkpoint applied") {
				t.Error("the backup took state from a refused primary")
			}
		})
	}
}

// TestTLSJoinRefusesStrangers: a replay primary accepting backups
// (--accept-backups) refuses one of another cluster, which says why, and
// then takes a backup of its own cluster.
func TestTLSJoinRefusesStrangers(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: a multi-process test")
	}
	home, other := clusterCerts(t, "localhost"), clusterCerts(t, "localhost")
	dir := t.TempDir()
	accept := freePort(t, "tcp")
	common := []string{"--mode", "replay", "--machine", "sim", "--guest", "kv", "--memory", "1M",
		"--net", "udp:" + freePort(t, "udp"), "--disk", filepath.Join(dir, "disk.img"), "--disk-size", "1M",
		"--arbiter", "disk:" + filepath.Join(dir, "lease"), "--status-every", "0"}
	var pout, sout, bout syncBuffer
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("primary:\n%s\nstranger:\n%s\nbackup:\n%s", pout.String(), sout.String(), bout.String())
		}
	})
	ftckptProcess(t, &pout, slices.Concat([]string{"--role", "primary", "--accept-backups", accept}, common, hostTLS(home, "localhost"))...)
	waitFor(t, &pout, "accepting backups")
	// Images of their own (--role: mirrored disks).
	s := ftckptProcess(t, &sout, slices.Concat([]string{"--role", "backup", "--join", accept}, common, []string{"--disk", filepath.Join(dir, "stranger.img")}, hostTLS(other, "localhost"))...)
	if err := s.Wait(); err == nil {
		t.Fatal("the stranger's join exited cleanly")
	}
	if !strings.Contains(sout.String(), `is signed by "ftckpt cluster CA`) {
		t.Error("the stranger does not say why it was refused")
	}
	waitFor(t, &pout, "refused a connection")
	if strings.Contains(pout.String(), "a backup attached") {
		t.Fatal("the stranger attached")
	}
	ftckptProcess(t, &bout, slices.Concat([]string{"--role", "backup", "--join", accept}, common, []string{"--disk", filepath.Join(dir, "backup.img")}, hostTLS(home, "localhost"))...)
	waitFor(t, &pout, "a backup attached")
	waitFor(t, &bout, "full checkpoint applied")
}
