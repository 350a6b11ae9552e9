package witness

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestOpenSpecs(t *testing.T) {
	dir := t.TempDir()
	img := filepath.Join(dir, "disk.img")
	if err := os.WriteFile(img, make([]byte, 4096), 0o644); err != nil {
		t.Fatal(err)
	}
	good := map[string]string{
		"raft://127.0.0.1:7000,127.0.0.1:7010,[::1]:7020": "raft://127.0.0.1:7000,127.0.0.1:7010,[::1]:7020",
		"raft://w1.example:7000":                          "raft://w1.example:7000",
		"disk:" + filepath.Join(dir, "lease"):             "disk:" + filepath.Join(dir, "lease"),
		"disk:" + img + "#1024":                           "disk:" + img + "#1024",
		"disk:" + img + "#0xe00":                          "disk:" + img + "#3584",
	}
	for spec, want := range good {
		a, err := Open(spec)
		if err != nil {
			t.Errorf("Open(%q): %v", spec, err)
			continue
		}
		if got := a.(interface{ String() string }).String(); got != want {
			t.Errorf("Open(%q) = %s, want %s", spec, got, want)
		}
		a.Close()
	}
	bad := map[string]string{
		"raft://":                    "no witness addresses",
		"raft://a:1,a:1":             "listed twice",
		"raft://a":                   "missing port",
		"raft://:7000":               "empty host",
		"raft://a:0":                 "port must be",
		"raft://a:99999":             "port must be",
		"raft://a:1,":                "missing port",
		"disk:":                      "empty path",
		"disk:" + img + "#x":         "offset",
		"disk:" + img + "#100":       "multiple of 512",
		"disk:" + img + "#-512":      "offset",
		"disk:" + img + "#4096":      "too small",
		"disk:" + dir + "/no/such/f": "no such file",
		"disk:" + dir + "/missing#0": "no such file",
		"etcd://x:1":                 "unknown kind",
		"raft:/a:1":                  "unknown kind",
		"/var/lib/ftckpt/lease":      "unknown kind",
	}
	for spec, want := range bad {
		if _, err := Open(spec); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Open(%q) = %v, want an error containing %q", spec, err, want)
		}
	}
}

func TestOpenDefault(t *testing.T) {
	t.Chdir(t.TempDir())
	a, err := Open("")
	if err != nil {
		t.Fatal(err)
	}
	if got := a.(*DiskLease).String(); got != DefaultSpec {
		t.Fatalf("default arbiter %s, want %s", got, DefaultSpec)
	}
	if _, err := os.Stat("ftckpt.lease"); err != nil {
		t.Fatalf("default lease file not created: %v", err)
	}
}

func TestParsePeers(t *testing.T) {
	peers, err := ParsePeers("a=10.0.0.1:7000,b=10.0.0.2:7000,c=[::1]:7100")
	if err != nil {
		t.Fatal(err)
	}
	want := []Peer{
		{ID: "a", Client: "10.0.0.1:7000", Raft: "10.0.0.1:7001"},
		{ID: "b", Client: "10.0.0.2:7000", Raft: "10.0.0.2:7001"},
		{ID: "c", Client: "[::1]:7100", Raft: "[::1]:7101"},
	}
	if len(peers) != len(want) {
		t.Fatalf("ParsePeers = %v", peers)
	}
	for i := range want {
		if peers[i] != want[i] {
			t.Errorf("peer %d = %+v, want %+v", i, peers[i], want[i])
		}
	}
	for _, bad := range []string{"", "a", "=h:1", "a=h", "a=h:65535", "a=h:1,b", "a=h:x"} {
		if _, err := ParsePeers(bad); err == nil {
			t.Errorf("ParsePeers(%q) accepted", bad)
		}
	}
}
