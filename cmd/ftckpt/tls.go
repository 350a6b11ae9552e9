package main

import (
	"errors"
	"fmt"
	"log/slog"
	"strings"

	"github.com/ftckpt/ftckpt/checkpoint/mtls"
	"github.com/spf13/cobra"
)

// tlsFlags are the flags of every command that connects hosts: the
// node's certificate, key and CA, the peer names it accepts, or --insecure.
type tlsFlags struct {
	cert, key, ca string
	peerNames     []string
	insecure      bool
}

func (f *tlsFlags) add(cmd *cobra.Command) {
	fl := cmd.Flags()
	fl.StringVar(&f.cert, "tls-cert", "", "this host's certificate (PEM), signed by --tls-ca: every connection to the peer and the witness is mutual TLS 1.3 (ftckpt certs init makes them)")
	fl.StringVar(&f.key, "tls-key", "", "the key of --tls-cert (PEM)")
	fl.StringVar(&f.ca, "tls-ca", "", "the cluster's CA certificate (PEM): peers are accepted only with a certificate it signed")
	fl.StringSliceVar(&f.peerNames, "peer-name", nil, "accept only peers whose certificate is for one of these names (comma-separated or repeated; default: any the CA signed)")
	fl.BoolVar(&f.insecure, "insecure", false, "plain TCP, no TLS: anyone who reaches the ports can join, feed state or take the lease (a test network only)")
}

// given says whether any TLS flag was given.
func (f *tlsFlags) given() bool {
	return f.cert != "" || f.key != "" || f.ca != "" || len(f.peerNames) > 0
}

// errNoTLS is the refusal of a run between hosts with no TLS flags.
var errNoTLS = errors.New("no TLS: give --tls-cert, --tls-key and --tls-ca (ftckpt certs init DIR --hosts HOST,... makes them), " +
	"or --insecure for plain TCP, which lets anyone who reaches the ports join, feed state or take the lease")

// identity loads the identity the flags name, nil with --insecure (logged
// at WARN), and says which it is. what names the connections, for the log.
func (f *tlsFlags) identity(what string) (*mtls.Identity, error) {
	id, err := f.load(what)
	if id != nil {
		slog.Info("mutual TLS 1.3", "connections", what, "certificate", id.Name(), "expires", id.Expires().Format("2006-01-02"), "peer-names", strings.Join(id.PeerNames(), ","))
	}
	return id, err
}

// load is identity, silent but for --insecure's warning (a command that
// only asks a question: witness status).
func (f *tlsFlags) load(what string) (*mtls.Identity, error) {
	switch {
	case f.insecure && f.given():
		return nil, errors.New("--insecure and --tls-*/--peer-name contradict each other: choose one")
	case f.insecure:
		slog.Warn("--insecure: plain TCP, neither authenticated nor encrypted", "connections", what)
		return nil, nil
	case !f.given():
		return nil, errNoTLS
	}
	files := mtls.Files{Cert: f.cert, Key: f.key, CA: f.ca, PeerNames: f.peerNames}
	if m := files.Missing(); len(m) > 0 {
		return nil, fmt.Errorf("%s missing: --tls-cert, --tls-key and --tls-ca go together", strings.Join(m, ", "))
	}
	return mtls.Load(files)
}
