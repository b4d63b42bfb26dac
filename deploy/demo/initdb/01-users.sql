-- The demo's application table. Policy columns (deploy/policy.yaml) are
-- bytea: the database only ever holds their ciphertext.
CREATE TABLE public.users (
    id         serial PRIMARY KEY,
    name       text,
    ssn        bytea,
    birth_date bytea,
    email      bytea
);
