package proxy

import (
	"bytes"
	"strings"
	"testing"
)

// TestSCRAMClientRFC7677 checks the client against the SCRAM-SHA-256 test
// vector of RFC 7677 §3.
func TestSCRAMClientRFC7677(t *testing.T) {
	c, err := newSCRAMClient("pencil", nil, bytes.NewReader(make([]byte, 18)))
	if err != nil {
		t.Fatal(err)
	}
	c.nonce = "rOprNGfwEbeRWgbNEkqO"
	c.firstBare = "n=user,r=" + c.nonce
	if got := string(c.clientFirst()); got != "n,,n=user,r=rOprNGfwEbeRWgbNEkqO" {
		t.Fatalf("client-first = %q", got)
	}
	final, err := c.clientFinal([]byte("r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"))
	if err != nil {
		t.Fatal(err)
	}
	want := "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
	if string(final) != want {
		t.Fatalf("client-final\n got %s\nwant %s", final, want)
	}
	if err := c.verifyServerFinal([]byte("v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")); err != nil {
		t.Fatalf("valid server signature refused: %v", err)
	}
	if err := c.verifyServerFinal([]byte("v=7rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")); err == nil {
		t.Fatal("forged server signature accepted")
	}
	if err := c.verifyServerFinal([]byte("e=invalid-proof")); err == nil || !strings.Contains(err.Error(), "invalid-proof") {
		t.Fatalf("server error not reported: %v", err)
	}
}

func TestSCRAMClientRejectsBadServerFirst(t *testing.T) {
	for _, sf := range []string{
		"r=someoneelse,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096", // nonce not ours
		"r=NONCE,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",       // nonce not extended
		"r=NONCEx,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=0",         // no iterations
		"r=NONCEx,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=999999999", // absurd iterations
		"r=NONCEx,s=!!!,i=4096",                           // bad salt
		"r=NONCEx,s=,i=4096",                              // empty salt
		"garbage",
	} {
		c, _ := newSCRAMClient("pw", nil, nil)
		c.nonce = "NONCE"
		if _, err := c.clientFinal([]byte(sf)); err == nil {
			t.Errorf("server-first %q accepted", sf)
		}
	}
}

func TestSCRAMChannelBindingHeader(t *testing.T) {
	c, _ := newSCRAMClient("pw", []byte{1, 2, 3}, nil)
	if c.mechanism() != scramSHA256Plus || !strings.HasPrefix(string(c.clientFirst()), "p=tls-server-end-point,,n=,r=") {
		t.Fatalf("PLUS client: mechanism %s, first %q", c.mechanism(), c.clientFirst())
	}
	c.nonce = "N"
	final, err := c.clientFinal([]byte("r=Nx,s=c2FsdA==,i=1"))
	if err != nil {
		t.Fatal(err)
	}
	// c= is base64("p=tls-server-end-point,," + 0x010203).
	if !strings.HasPrefix(string(final), "c=cD10bHMtc2VydmVyLWVuZC1wb2ludCwsAQID,") {
		t.Fatalf("client-final %q does not carry the binding data", final)
	}
}
