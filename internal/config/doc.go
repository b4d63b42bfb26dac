// Package config loads pgcrypt-proxy's configuration (DESIGN.md,
// "Contracts") into an immutable Config.
//
// Precedence, lowest first: built-in defaults (Default), the YAML file
// (--config, else $PGCRYPT_CONFIG, else ./pgcrypt-proxy.yaml when it
// exists), PGCRYPT_* environment variables, then command-line flags. Every
// setting has a dotted name taken from the YAML path: upstream.tls.mode is
// the flag --upstream.tls.mode and the variable PGCRYPT_UPSTREAM_TLS_MODE.
// Named KMS backends are kms.NAME.field: PGCRYPT_KMS_LOCAL_KEYRING sets
// kms.local.keyring. PGCRYPT_MASTER_KEY is not a setting: the local KMS
// reads it directly, and it never enters a Config.
//
// Unknown keys in the file are errors (a typo must not silently keep a
// default), and every problem is reported at once, with the file's line
// where there is one. Connection strings are Secret values whose String
// redacts the password, so a Config can be logged.
//
// Defaults are the safe ones: client TLS required, upstream TLS
// verify-full, TLS 1.3 minimum everywhere (not configurable downwards).
package config
