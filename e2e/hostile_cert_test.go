package e2e

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// A blocklist server whose certificate names hosts with line feeds in
// them (any server can send one): Go's "x509: certificate is valid for
// NAME, not HOST" holds the names as they are, and 'moat blocklist
// update' printed them in its message (and saved them as the list's last
// problem): a line of the server's own ("moat: blocklist drop: 9
// networks") among moat's. It is printed escaped on its line. The real
// binary against a real TLS server in the namespace.
func TestBlocklistHostileCertificateText(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "nftables", false)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	const fake = "moat: blocklist drop: 9 networks (+9 -0)"
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "evil"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		DNSNames: []string{"evil\n" + fake, "x\r" + fake, "y\v" + fake}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	ln := loopbackListener(t, e.topo.Server)
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprintln(w, "192.0.2.3") }))
	_ = srv.Listener.Close()
	srv.Listener = ln
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	ls := &listServer{srv: srv, caFile: filepath.Join(e.dir, "evil-ca.pem")}
	writeFile(t, ls.caFile, string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})))
	url := fmt.Sprintf("https://localhost:%d/drop.txt", ln.Addr().(*net.TCPAddr).Port)
	e.apply(fmt.Sprintf("default deny incoming\nallow 80/tcp\nblocklist drop url %s\n", url))

	fakeLine := func(what, out string) {
		t.Helper()
		for _, l := range strings.FieldsFunc(out, func(r rune) bool { return r == '\n' || r == '\r' || r == '\v' }) {
			if strings.HasPrefix(strings.TrimSpace(l), fake) {
				t.Errorf("%s: the server's text made a line of its own:\n%s", what, out)
				return
			}
		}
	}
	out, err := e.moatTLS(ls, "blocklist", "update")
	if exitCode(err) != 1 || !strings.Contains(out, "certificate is valid for") || !strings.Contains(out, `evil\n`+fake) {
		t.Errorf("update: exit %d, want 1 naming the certificate's names escaped:\n%s", exitCode(err), out)
	}
	fakeLine("blocklist update", out)
	fakeLine("blocklist list", e.mustMoat("blocklist", "list"))
	fakeLine("status", e.mustMoat("status"))
	e.expect(false, "client/192.0.2.3 tcp 192.0.2.1:80 open") // nothing loaded from it
}
