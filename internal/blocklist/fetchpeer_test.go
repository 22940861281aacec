package blocklist

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// A server's certificate names what it likes, line feeds included, and
// Go's "x509: certificate is valid for NAME, not HOST" quotes the names as
// they are: 'moat blocklist update' printed them in its message, and
// 'moat blocklist list' as the list's last problem, where a line feed
// started a line of the server's own. The text is escaped on one line;
// the error still unwraps to the x509 error.
func TestFetchServerTextOnOneLine(t *testing.T) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	// ASCII only: a name is an IA5String.
	hostile := "evil\nmoat: blocklist drop: 9 networks (+9 -0)\vx\fy\rz"
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "evil"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		DNSNames: []string{hostile}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	c := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, ServerName: "lists.example"}}}
	_, err = (&Fetcher{Client: c, Timeout: 5 * time.Second}).Fetch(context.Background(), srv.URL, Meta{})
	if err == nil {
		t.Fatal("fetched from a server whose certificate is not for the host")
	}
	msg := err.Error()
	if strings.ContainsAny(msg, "\n\r\v\f") || !strings.Contains(msg, `evil\nmoat: blocklist drop`) || !strings.Contains(msg, `\vx\fy\rz`) {
		t.Errorf("the server's text is not escaped on one line: %q", msg)
	}
	var he x509.HostnameError
	if !errors.As(err, &he) {
		t.Errorf("the error no longer unwraps to the x509 error: %#v", err)
	}
}
