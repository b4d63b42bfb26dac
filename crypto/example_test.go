package crypto_test

import (
	"bytes"
	"errors"
	"fmt"

	"github.com/pgcrypt/pgcrypt-proxy/crypto"
)

func Example() {
	dek := bytes.Repeat([]byte{0x2A}, crypto.DEKSize) // from the keystore, unwrapped by the KMS
	k, err := crypto.NewKey(7, dek)
	if err != nil {
		panic(err)
	}
	column := []byte("public.users.ssn")

	env, err := k.Encrypt(nil, crypto.ModeRandomized, []byte("123-45-6789"), column, nil)
	if err != nil {
		panic(err)
	}
	h, _ := crypto.ParseHeader(env) // on read: find the DEK by h.KeyID
	pt, err := k.Decrypt(nil, env, column)
	fmt.Println(h.KeyID, h.Mode, len(env)-len(pt), string(pt), err)

	_, err = k.Decrypt(nil, env, []byte("public.users.email")) // copied to another column
	fmt.Println(errors.Is(err, crypto.ErrAuth), err)
	fmt.Println(k)
	// Output:
	// 7 randomized 48 123-45-6789 <nil>
	// true crypto: message authentication failed (key id 7)
	// crypto.Key{id: 7, material: REDACTED}
}
