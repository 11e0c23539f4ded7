//! `[keys] pkcs11` against a real SoftHSM2 token made by the test: the same master key in a
//! file and in the token gives the same key id and column keys (values written by one read
//! through the other), and every failure (wrong PIN, no PIN, missing token, missing key,
//! extractable key, missing module) is one line and a non-zero exit.
//!
//! One test function: the token store is named by `SOFTHSM2_CONF`, an environment variable
//! of this process that the in-process proxy's PKCS#11 module reads.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::object::{Attribute, KeyType, ObjectClass};
use cryptoki::session::UserType;
use cryptoki::types::AuthPin;

use common::{cluster, column_toml, Proxy};

const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
const PIN: &str = "4711-hsm-pin";

fn module() -> Option<PathBuf> {
    let found = [MODULE, "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists());
    if found.is_none() {
        // scripts/test.sh installs softhsm2; a plain `cargo test` without it says so.
        eprintln!("SoftHSM2 is not installed (apt-get install softhsm2): skipping");
    }
    found
}

/// A token labelled `pgveil` in a fresh store under `dir`; `SOFTHSM2_CONF` points at it.
fn make_token(dir: &Path) -> PathBuf {
    let tokens = dir.join("tokens");
    std::fs::create_dir_all(&tokens).unwrap();
    let conf = dir.join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
            tokens.display()
        ),
    )
    .unwrap();
    std::env::set_var("SOFTHSM2_CONF", &conf);
    let out = Command::new("softhsm2-util")
        .args([
            "--init-token",
            "--free",
            "--label",
            "pgveil",
            "--pin",
            PIN,
            "--so-pin",
            "so-4711",
        ])
        .env("SOFTHSM2_CONF", &conf)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    conf
}

/// Imports `value` as a secret key labelled `label` (sensitive and non-extractable unless
/// `extractable`). The context is kept for the process: finalizing it would end the
/// proxy's sessions with the module too.
fn import_key(module: &Path, label: &str, value: &[u8], extractable: bool) {
    let pkcs11 = Pkcs11::new(module).unwrap();
    let _ = pkcs11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK));
    let slot = pkcs11
        .get_slots_with_token()
        .unwrap()
        .into_iter()
        .find(|s| pkcs11.get_token_info(*s).unwrap().label().trim_end() == "pgveil")
        .unwrap();
    let session = pkcs11.open_rw_session(slot).unwrap();
    let _ = session.login(UserType::User, Some(&AuthPin::new(PIN.into())));
    session
        .create_object(&[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::GENERIC_SECRET),
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(!extractable),
            Attribute::Extractable(extractable),
            Attribute::Sign(true),
            Attribute::Label(label.as_bytes().to_vec()),
            Attribute::Value(value.to_vec()),
        ])
        .unwrap();
    drop(session);
    std::mem::forget(pkcs11);
}

fn config(keys: &str, columns: &str) -> String {
    format!(
        "{}\n[keys]\n{keys}\n[policy]\ndefault_access = \"plaintext\"\n{columns}",
        common::relay_config(cluster().port, "")
    )
}

fn pkcs11_keys(module: &Path, token: &str, label: &str, pin_env: &str) -> String {
    format!(
        "pkcs11 = {{ module = \"{}\", token = \"{token}\", key_label = \"{label}\", pin_env = \"{pin_env}\" }}",
        module.display()
    )
}

fn check(dir: &Path, conf: &Path, toml: &str, pin: Option<&str>) -> Output {
    let path = dir.join("check.toml");
    std::fs::write(&path, toml).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pgveil"));
    cmd.args(["check", "--config", path.to_str().unwrap()])
        .env("SOFTHSM2_CONF", conf)
        .env_remove("PGVEIL_MASTER_KEY")
        .env_remove("TEST_HSM_PIN");
    if let Some(pin) = pin {
        cmd.env("TEST_HSM_PIN", pin);
    }
    cmd.output().unwrap()
}

/// `check` fails with exactly one problem line naming `expected`, and the PIN nowhere.
#[track_caller]
fn assert_one_problem(out: &Output, expected: &str) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_eq!(
        stdout.lines().count() + stderr.lines().count(),
        1,
        "{out:?}"
    );
    let line = format!("{stdout}{stderr}");
    assert!(line.contains(expected), "{line}");
    assert!(!line.contains(PIN) && !line.contains("panicked"), "{line}");
}

#[tokio::test(flavor = "multi_thread")]
async fn master_key_in_a_token() {
    let Some(module) = module() else { return };
    let dir = tempfile::tempdir().unwrap();
    let conf = make_token(dir.path());
    std::env::set_var("TEST_HSM_PIN", PIN);
    let master = [0x5au8; 32];
    import_key(&module, "master", &master, false);
    import_key(&module, "leaky", &[0x11u8; 32], true);

    let table = "public.hsm_patients";
    cluster().psql(&format!(
        "DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (id int PRIMARY KEY, ssn bytea)"
    ));
    let columns = column_toml(table, "ssn", "text", "deterministic", "");
    let hsm_config = config(
        &pkcs11_keys(&module, "pgveil", "master", "TEST_HSM_PIN"),
        &columns,
    );
    let keys = dir.path().join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    let key_file = keys.join("master.key");
    {
        use base64::Engine;
        use std::os::unix::fs::PermissionsExt;
        let b64 = base64::engine::general_purpose::STANDARD.encode(master);
        std::fs::write(&key_file, format!("{b64}\n")).unwrap();
        std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let file_config = config("master_key_file = \"keys/master.key\"", &columns);

    let secrets = ["hsm-ssn-0001-9921", "hsm-ssn-0002-9921"];
    common::secrets(secrets);
    // Written through the token...
    {
        let proxy = Proxy::start(&hsm_config, dir.path());
        let client = common::connect(proxy.port()).await;
        for (i, v) in secrets.iter().enumerate() {
            client
                .execute(
                    &format!("INSERT INTO {table} VALUES ($1, $2)"),
                    &[&(i as i32), v],
                )
                .await
                .unwrap();
        }
        let rows = client
            .query(
                &format!("SELECT id FROM {table} WHERE ssn = $1"),
                &[&secrets[1]],
            )
            .await
            .unwrap();
        assert_eq!(rows.len(), 1);
    }
    // ... under the id of the same key in a file, and readable through the file.
    let stored_id = cluster().psql(&format!(
        "SELECT DISTINCT encode(substring(ssn FROM 2 FOR 4), 'hex') FROM {table}"
    ));
    let file_id = pgveil::crypto::keyring::key_id(&pgveil::crypto::MasterKey::from_bytes(master));
    assert_eq!(stored_id.trim(), format!("{file_id:08x}"));
    {
        let proxy = Proxy::start(&file_config, dir.path());
        let client = common::connect(proxy.port()).await;
        let got: Vec<String> = client
            .query(&format!("SELECT ssn FROM {table} ORDER BY id"), &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(got, secrets);
    }

    // The configuration checks out with the right PIN.
    let out = check(dir.path(), &conf, &hsm_config, Some(PIN));
    assert!(out.status.success(), "{out:?}");

    // Failures: one line each, never the PIN.
    let out = check(dir.path(), &conf, &hsm_config, Some("0000-wrong"));
    assert_one_problem(&out, "login to PKCS#11 token \"pgveil\" failed");
    let out = check(dir.path(), &conf, &hsm_config, None);
    assert_one_problem(&out, "TEST_HSM_PIN");
    let missing_token = config(
        &pkcs11_keys(&module, "nope", "master", "TEST_HSM_PIN"),
        &columns,
    );
    let out = check(dir.path(), &conf, &missing_token, Some(PIN));
    assert_one_problem(&out, "no token labelled \"nope\"");
    let missing_key = config(
        &pkcs11_keys(&module, "pgveil", "absent", "TEST_HSM_PIN"),
        &columns,
    );
    let out = check(dir.path(), &conf, &missing_key, Some(PIN));
    assert_one_problem(&out, "no secret key labelled \"absent\"");
    let leaky = config(
        &pkcs11_keys(&module, "pgveil", "leaky", "TEST_HSM_PIN"),
        &columns,
    );
    let out = check(dir.path(), &conf, &leaky, Some(PIN));
    assert_one_problem(&out, "could leave the token");
    let no_module = config(
        &pkcs11_keys(
            Path::new("/nonexistent/libpkcs11.so"),
            "pgveil",
            "master",
            "TEST_HSM_PIN",
        ),
        &columns,
    );
    let out = check(dir.path(), &conf, &no_module, Some(PIN));
    assert_one_problem(&out, "cannot load PKCS#11 module /nonexistent/libpkcs11.so");
    // A file that is not a PKCS#11 module.
    let not_module = config(
        &pkcs11_keys(&key_file, "pgveil", "master", "TEST_HSM_PIN"),
        &columns,
    );
    let out = check(dir.path(), &conf, &not_module, Some(PIN));
    assert_one_problem(&out, "cannot load PKCS#11 module");

    // serve with a wrong PIN: one line on stderr, non-zero exit.
    let path = dir.path().join("serve.toml");
    std::fs::write(&path, &hsm_config).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_pgveil"))
        .args(["serve", "--config", path.to_str().unwrap()])
        .env("SOFTHSM2_CONF", &conf)
        .env("TEST_HSM_PIN", "0000-wrong")
        .output()
        .unwrap();
    assert!(!out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stderr.lines().last().unwrap_or_default();
    assert!(last.contains("login to PKCS#11 token"), "{stderr}");
    assert!(
        !stderr.contains(PIN) && !stderr.contains("panicked"),
        "{stderr}"
    );
}
