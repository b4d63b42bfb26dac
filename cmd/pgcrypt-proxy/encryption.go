package main

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/rs/zerolog"

	"github.com/pgcrypt/pgcrypt-proxy/internal/config"
	"github.com/pgcrypt/pgcrypt-proxy/keys"
	"github.com/pgcrypt/pgcrypt-proxy/kms"
	"github.com/pgcrypt/pgcrypt-proxy/metrics"
	"github.com/pgcrypt/pgcrypt-proxy/policy"
)

// encryption is what serve needs to encrypt: the policy, the keystore and
// the KMS backends behind it.
type encryption struct {
	policy *policy.Holder
	keys   *keys.Store
	pool   *pgxpool.Pool
	keks   map[string]kms.KEK
}

func (e *encryption) close() {
	if e.pool != nil {
		e.pool.Close()
	}
	closeKEKs(e.keks)
}

// openEncryption loads the policy and, when there is one, opens the KMS
// backends and the keystore. Without policy_file the proxy is a
// pass-through.
func openEncryption(ctx context.Context, cfg *config.Config, log zerolog.Logger, m *metrics.Metrics) (*encryption, error) {
	enc := &encryption{}
	if cfg.PolicyFile == "" {
		log.Warn().Msg("no policy_file: the proxy encrypts nothing")
		return enc, nil
	}
	h, err := policy.NewHolder(cfg.PolicyFile)
	if err != nil {
		return nil, err
	}
	pol := h.Current()
	checkKMS := func(p *policy.Policy) error {
		var errs []error
		for _, k := range p.Keys {
			if _, ok := cfg.KMS[k.KMS]; !ok {
				errs = append(errs, fmt.Errorf("policy key %q uses kms %q, which the config does not define under kms:", k.Name, k.KMS))
			}
		}
		return errors.Join(errs...)
	}
	h.Check = checkKMS
	var errs []error
	if err := checkKMS(pol); err != nil {
		errs = append(errs, err)
	}
	if cfg.Keystore.DSN == "" {
		errs = append(errs, errors.New("keystore.dsn is required with a policy (the database where wrapped data keys are kept)"))
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	enc.policy = h
	if enc.keks, err = openKEKs(ctx, cfg); err != nil {
		return nil, err
	}
	enc.keks = instrumentKEKs(m, enc.keks)
	if enc.pool, err = keystorePool(ctx, cfg); err != nil {
		enc.close()
		return nil, err
	}
	onCache := func(hit bool) {
		if hit {
			m.DEKCacheHit()
		} else {
			m.DEKCacheMiss()
		}
	}
	if enc.keys, err = keys.Open(ctx, enc.pool, enc.keks, keys.Options{Schema: cfg.Keystore.Schema, Logger: log, OnCache: onCache}); err != nil {
		enc.close()
		return nil, err
	}
	log.Info().Str("policy", cfg.PolicyFile).Str("digest", pol.Digest).Int("tables", len(pol.Tables())).
		Int("columns", len(pol.Columns())).Str("keystore", cfg.Keystore.DSN.String()).Msg("encryption ready")
	return enc, nil
}

// keystorePool connects to keystore.dsn; errors name the DSN with its
// password redacted.
func keystorePool(ctx context.Context, cfg *config.Config) (*pgxpool.Pool, error) {
	pool, err := pgxpool.New(ctx, cfg.Keystore.DSN.Value())
	if err != nil {
		return nil, fmt.Errorf("keystore %s: %w", cfg.Keystore.DSN, err)
	}
	return pool, nil
}
