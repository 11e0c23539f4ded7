-- The demo's roles and tables: scripts/run.sh runs this against its throwaway cluster, and
-- tests/readme.rs against the test cluster, so README's "Try it" runs on the same schema.
-- psql variable: password (the logins' password). Safe to run again: nothing is replaced,
-- and grants are made only when the table is created (a second run must not undo what
-- `pgveil apply` changed).
DO $$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'clinician') THEN CREATE ROLE clinician; END IF;
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'billing') THEN CREATE ROLE billing; END IF;
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'researcher') THEN CREATE ROLE researcher; END IF;
  -- People: a clinician, someone in billing, and a login no access rule names.
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'alice') THEN CREATE ROLE alice LOGIN IN ROLE clinician; END IF;
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'bob') THEN CREATE ROLE bob LOGIN IN ROLE billing; END IF;
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'guest') THEN CREATE ROLE guest LOGIN; END IF;
END $$;
ALTER ROLE alice PASSWORD :'password';
ALTER ROLE bob PASSWORD :'password';
ALTER ROLE guest PASSWORD :'password';
GRANT clinician TO postgres;
DO $$ BEGIN
  IF to_regclass('public.patients') IS NULL THEN
    CREATE TABLE patients (id serial PRIMARY KEY, name text, ssn bytea UNIQUE, birth_date bytea);
    GRANT SELECT, INSERT, UPDATE, DELETE ON patients TO clinician, billing, researcher, guest;
    GRANT USAGE ON SEQUENCE patients_id_seq TO clinician, billing, researcher, guest;
  END IF;
  IF to_regclass('public.visits') IS NULL THEN
    CREATE TABLE visits (id serial PRIMARY KEY, patient_id int REFERENCES patients(id), reason text);
    GRANT SELECT, INSERT, UPDATE, DELETE ON visits TO clinician, billing, researcher, guest;
    GRANT USAGE ON SEQUENCE visits_id_seq TO clinician, billing, researcher, guest;
  END IF;
END $$;
