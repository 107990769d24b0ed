//! Loading the coordinator's data dir (admin token, token key) and the agent's state dir
//! (replica id) from arbitrary file contents, written into a directory and loaded as at
//! start-up. Whatever loads must be usable (a token an HTTP client can send, a non-constant
//! 32-byte key, an id the coordinator accepts), whatever is refused must say which file,
//! and a file that is missing (or an empty replica id) is generated once and then kept.
#![no_main]

#[path = "../../coordinator/src/identity/secrets.rs"]
#[allow(dead_code, reason = "only the loaders are fuzzed")]
mod secrets;
#[path = "../../agent/src/state_dir.rs"]
#[allow(dead_code, reason = "only the replica id is fuzzed")]
mod state_dir;

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use meshgate_proto::id::valid_replica_id;

/// One directory per process, on tmpfs where there is one (the loaders fsync).
fn dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let base = PathBuf::from("/dev/shm");
        let base = if base.is_dir() {
            base
        } else {
            std::env::temp_dir()
        };
        let d = base.join(format!("meshgate-fuzz-{}", std::process::id()));
        fs::create_dir_all(&d).expect("the fuzz directory can be created");
        fs::set_permissions(&d, fs::Permissions::from_mode(0o700)).expect("chmod 700");
        d
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, content)) = data.split_first() else {
        return;
    };
    let d = dir();
    let open_to_others = sel & 0x10 != 0;
    let missing = sel & 0x20 != 0;
    match sel % 3 {
        0 => admin_token(d, content, open_to_others, missing),
        1 => token_key(d, content, open_to_others, missing),
        _ => replica_id(d, content, missing),
    }
});

fn place(path: &std::path::Path, content: &[u8], open_to_others: bool, missing: bool) {
    let _ = fs::remove_file(path);
    if missing {
        return;
    }
    secrets::write_secret(path, content).expect("the secret is written");
    if open_to_others {
        fs::set_permissions(path, fs::Permissions::from_mode(0o644)).expect("chmod 644");
    }
}

fn admin_token(d: &Path, content: &[u8], open_to_others: bool, missing: bool) {
    let path = d.join("admin-token");
    place(&path, content, open_to_others, missing);
    let got = secrets::admin_token(d);
    if missing {
        let t = got.expect("a missing token is generated");
        assert_eq!(secrets::admin_token(d).expect("and then kept"), t);
        return;
    }
    let usable = std::str::from_utf8(content)
        .ok()
        .map(str::trim)
        .filter(|t| t.len() >= secrets::MIN_ADMIN_TOKEN_LEN && t.bytes().all(secrets::header_safe));
    match got {
        Ok(t) => {
            assert!(!open_to_others, "a token others can read is refused");
            assert_eq!(Some(t.as_str()), usable, "{content:?}");
            assert!(t.bytes().all(|b| b == b'\t' || (0x20..0x7f).contains(&b)));
        }
        Err(e) => {
            assert!(
                open_to_others || usable.is_none(),
                "{content:?} refused: {e:#}"
            );
            assert!(format!("{e:#}").contains("admin-token"), "{e:#}");
        }
    }
}

fn token_key(d: &Path, content: &[u8], open_to_others: bool, missing: bool) {
    let path = d.join("token-key");
    place(&path, content, open_to_others, missing);
    let got = secrets::token_key(d);
    if missing {
        let k = got.expect("a missing key is generated");
        assert_eq!(secrets::token_key(d).expect("and then kept"), k);
        return;
    }
    let usable = content.len() == 32 && content.iter().any(|b| *b != content[0]);
    match got {
        Ok(k) => {
            assert!(!open_to_others && usable, "{content:?}");
            assert_eq!(k[..], content[..]);
        }
        Err(e) => {
            assert!(open_to_others || !usable, "{content:?} refused: {e:#}");
            assert!(format!("{e:#}").contains("token-key"), "{e:#}");
        }
    }
}

fn replica_id(d: &Path, content: &[u8], missing: bool) {
    let path = d.join("replica-id");
    let _ = fs::remove_file(&path);
    if !missing {
        fs::write(&path, content).expect("the replica id is written");
    }
    let text = std::str::from_utf8(content).ok().map(str::trim);
    let generated = missing || text == Some("");
    match state_dir::replica_id(d) {
        Ok(id) => {
            assert!(valid_replica_id(&id), "{id:?} from {content:?}");
            if !generated {
                assert_eq!(Some(id.as_str()), text);
            }
            assert_eq!(state_dir::replica_id(d).expect("kept"), id);
        }
        Err(e) => {
            assert!(
                !generated && !text.is_some_and(valid_replica_id),
                "{content:?}: {e:#}"
            );
            assert!(format!("{e:#}").contains("replica-id"), "{e:#}");
        }
    }
}
