package main

import (
	"bytes"
	"strings"
	"testing"
)

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int64{
		"16M": 16 << 20, "16MiB": 16 << 20, "16mb": 16 << 20, "64G": 64 << 30, "4096": 4096, "1T": 1 << 40, " 2K ": 2048,
	} {
		got, err := parseSize(in)
		if err != nil || got != want {
			t.Errorf("parseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "M", "-1M", "0", "12X", "1.5G", "99999999999T", "16MiBs"} {
		if _, err := parseSize(in); err == nil {
			t.Errorf("parseSize(%q) accepted", in)
		}
	}
}

// runCLI runs ftckpt with args and returns its error.
func runCLI(args ...string) (string, error) {
	root := newRootCmd()
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs(args)
	err := root.Execute()
	return out.String(), err
}

// TestRunRejectsBadFlags checks each bad input is refused, with a message
// that names it, before any KVM work.
func TestRunRejectsBadFlags(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"run", "--guest", "nosuch"}, `unknown guest "nosuch"`},
		{[]string{"run", "--vcpus", "0"}, "0 vCPUs"},
		{[]string{"run", "--vcpus", "1000"}, "1000 vCPUs"},
		{[]string{"run", "--memory", "lots"}, `size "lots"`},
		{[]string{"run", "--memory", "1T"}, "above the maximum"},
		{[]string{"run", "--memory", "8M"}, "below the minimum"},
		{[]string{"run", "--memory", "17M"}, "multiple of 2 MiB"},
		{[]string{"run", "--vcpus", "2", "--irqchip=false"}, "userspace interrupt delivery supports 1 vCPU"},
		{[]string{"run", "--param", "novalue"}, "want key=value"},
		{[]string{"run", "--snapshot", "x"}, "go together"},
		{[]string{"restore"}, "accepts 1 arg"},
		{[]string{"run", "--net", "carrier-pigeon"}, `--net "carrier-pigeon"`},
		{[]string{"run", "--disk-size", "huge"}, "--disk-size"},
		{[]string{"restore", "--net", "x", "f.snap"}, `--net "x"`},
		{[]string{"restore", "/nonexistent/f.snap"}, "no such file"},
		{[]string{"--mode", "bogus"}, `--mode "bogus"`},
		{[]string{"--mode", "replay", "--epoch", "5ms"}, "--epoch does not apply to --mode replay"},
		{[]string{"--mode", "replay", "--vcpus", "4"}, "--vcpus does not apply"},
		{[]string{"--mode", "replay", "--precopy-rounds", "0"}, "--precopy-rounds applies to --mode checkpoint"},
		{[]string{"--mode", "replay", "--copy-after-resume", "never"}, "--copy-after-resume applies to --mode checkpoint"},
		{[]string{"--mode", "checkpoint", "--machine", "sim", "--copy-after-resume", "always"}, "--copy-after-resume does not apply to the software machine"},
		{[]string{"--mode", "checkpoint", "--copy-after-resume", "sometimes"}, `--copy-after-resume "sometimes": want auto, always or never`},
		{[]string{"--mode", "checkpoint", "--disk-mode", "raid"}, `--disk-mode "raid": want shared or mirrored`},
		{[]string{"--mode", "checkpoint", "--rejoin", "h:1"}, "--rejoin need --role"},
		{[]string{"--mode", "checkpoint", "--role", "primary", "--peer", "h:1", "--rejoin", "h:2", "--insecure"}, "--rejoin needs --accept-backups"},
		{[]string{"--mode", "replay", "--machine", "qemu"}, `--machine "qemu"`},
		{[]string{"--mode", "replay", "--machine", "sim", "--guest", "counter"}, "the software machine runs kv, tick"},
		{[]string{"--mode", "replay", "--machine", "kvm", "--guest", "nosuch"}, `unknown guest "nosuch"`},
		{[]string{"--mode", "replay", "--landing-delay", "5s"}, "landing delay"},
		{[]string{"--mode", "replay", "--machine", "sim", "--role", "backup", "--listen", "127.0.0.1:0", "--param", "novalue", "--disk", "none", "--net", "none"}, "want key=value"},
		{[]string{"--mode", "replay", "--machine", "sim", "--role", "backup", "--listen", "127.0.0.1:0", "--param", "journal=lots", "--disk", "none", "--net", "none"}, "parameters are numbers"},
		{[]string{"--mode", "replay", "--role", "primary"}, "needs --peer"},
		{[]string{"--mode", "checkpoint", "--machine", "sim", "--vcpus", "4"}, "--vcpus does not apply to the software machine"},
		{[]string{"--mode", "checkpoint", "--machine", "sim", "--guest", "counter"}, "the software machine runs kv, tick"},
		{[]string{"--mode", "checkpoint", "--machine", "qemu"}, `--machine "qemu"`},
		{[]string{"--mode", "checkpoint", "--landing-delay", "1ms"}, "--landing-delay applies to --mode replay"},
		{[]string{"--mode", "checkpoint", "--role", "primary", "--peer", "h:1", "--respawn", "--insecure"}, "--respawn needs --accept-backups"},
		{[]string{"--mode", "replay", "--role", "backup", "--listen", ":1", "--join", "h:1"}, "one of them"},
		{[]string{"--mode", "replay", "--accept-backups", ":1"}, "need --role"},
		{[]string{"--mode", "checkpoint", "--epoch", "fast"}, `--epoch "fast"`},
		{[]string{"--mode", "checkpoint", "--epoch", "auto", "--min-epoch", "1s", "--max-epoch", "10ms"}, "auto epoch bounds"},
		{[]string{"--mode", "checkpoint", "--role", "observer"}, `--role "observer"`},
		{[]string{"--mode", "checkpoint", "--role", "primary"}, "needs --peer"},
		{[]string{"--mode", "checkpoint", "--role", "backup"}, "needs --listen"},
		{[]string{"--mode", "checkpoint", "--machine", "kvm", "--dirty-tracking", "psychic"}, "--dirty-tracking"},
		{[]string{"--mode", "checkpoint", "--heartbeat", "1s", "--failure-timeout", "500ms"}, "heartbeat"},
		{[]string{"--mode", "checkpoint", "--machine", "kvm", "--vcpus", "65"}, "65 vCPUs"},
	} {
		_, err := runCLI(tc.args...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ftckpt %s: error %v, want it to say %q", strings.Join(tc.args, " "), err, tc.want)
		}
	}
}

func TestEnvironmentSetsFlags(t *testing.T) {
	t.Setenv("FTCKPT_VCPUS", "0")
	if _, err := runCLI("run"); err == nil || !strings.Contains(err.Error(), "0 vCPUs") {
		t.Errorf("FTCKPT_VCPUS=0 not applied: %v", err)
	}
}

func TestVersion(t *testing.T) {
	out, err := runCLI("version")
	if err != nil || !strings.HasPrefix(out, "ftckpt ") {
		t.Errorf("version: %q, %v", out, err)
	}
}

// TestGuestsListsBoth: every guest of both machines is listed, with the
// software machine's parameters.
func TestGuestsListsBoth(t *testing.T) {
	out, err := runCLI("guests")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"counter", "smp", "memtouch", "tick", "disk", "kv", "persist_every=4", "period_ns="} {
		if !strings.Contains(out, want) {
			t.Errorf("ftckpt guests does not mention %q:\n%s", want, out)
		}
	}
}
