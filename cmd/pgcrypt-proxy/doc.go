// Command pgcrypt-proxy is the one binary of the project: the proxy
// (serve) and the tools around it (policy check, kms local, keys, rotate,
// encrypt-existing, version). This package only parses flags, loads the
// configuration and wires the packages together; the logic lives in them:
// proxy (the wire protocol), rewrite (SQL analysis), policy, crypto, kms,
// keys (data keys and KEK rotation), migrate (encrypt-existing), metrics,
// audit and internal/admin.
//
// Exit status: 0 success; 1 failure; 2 usage or configuration error; some
// tools use 3 for "done, but with something to look at" (see their help).
// Every setting of the configuration file can be given as a flag named by
// its path or as a PGCRYPT_* environment variable (package internal/config).
package main
