//! The agent's state directory: its persistent replica id (so the coordinator gives it
//! the same Mesh IP after a restart) and its status socket.
//!
//! Only `std`, `anyhow` and `meshgate-proto` here: the `identity_files` fuzz target
//! compiles this file on its own (see `fuzz/`).

use std::{
    io::Write,
    path::{Path, PathBuf},
};

use anyhow::Context;
use meshgate_proto::id::{MAX_REPLICA_ID_LEN, valid_replica_id};

const REPLICA_ID_FILE: &str = "replica-id";
const STATUS_SOCKET: &str = "agent.sock";

/// The status socket inside `state_dir`.
pub fn status_socket(state_dir: &Path) -> PathBuf {
    state_dir.join(STATUS_SOCKET)
}

/// Reads the replica id kept in `state_dir`, or creates and stores a new one (also when
/// the file is empty). The file is written to a temporary name and renamed, so a crash
/// never leaves a half-written id. A file that holds something other than a replica id
/// is refused: the coordinator would refuse the id at every connection.
pub fn replica_id(state_dir: &Path) -> anyhow::Result<String> {
    std::fs::create_dir_all(state_dir)
        .with_context(|| format!("failed to create the state dir {}", state_dir.display()))?;
    let path = state_dir.join(REPLICA_ID_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => match std::str::from_utf8(&bytes).map(str::trim) {
            Ok("") => {}
            Ok(id) if valid_replica_id(id) => return Ok(id.to_owned()),
            _ => anyhow::bail!(
                "{} does not hold a replica id (1-{MAX_REPLICA_ID_LEN} characters of \
                 [A-Za-z0-9._-]), which the coordinator would refuse. Restore it from a \
                 backup of the state dir, or delete it to have a new one generated (the \
                 replica then gets a new Mesh IP).",
                path.display()
            ),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("failed to read {}", path.display())),
    }
    let id = meshgate_proto::id::new_replica_id();
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::File::create(&tmp)
        .with_context(|| format!("failed to write {}", tmp.display()))?;
    writeln!(file, "{id}")
        .and_then(|()| file.sync_all())
        .with_context(|| format!("failed to write {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("failed to store {}", path.display()))?;
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_replica_id_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let first = replica_id(dir.path()).unwrap();
        assert_eq!(replica_id(dir.path()).unwrap(), first);
        let other = tempfile::tempdir().unwrap();
        assert_ne!(replica_id(other.path()).unwrap(), first);
    }

    #[test]
    fn a_file_that_holds_no_replica_id_is_refused_and_an_empty_one_replaced() {
        // Found by the `identity_files` fuzz target: these were handed to the coordinator
        // as the replica id, which refuses them at every connection.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(REPLICA_ID_FILE);
        for bad in [&b"two words"[..], &[b'a'; 65], b"\xff\xfe", b"id\0"] {
            std::fs::write(&path, bad).unwrap();
            let e = format!("{:#}", replica_id(dir.path()).unwrap_err());
            assert!(e.contains("does not hold a replica id"), "{bad:?}: {e}");
        }
        std::fs::write(&path, " kept-id.1 \n").unwrap();
        assert_eq!(replica_id(dir.path()).unwrap(), "kept-id.1");
        std::fs::write(&path, "\n").unwrap();
        let new = replica_id(dir.path()).unwrap();
        assert!(meshgate_proto::id::valid_replica_id(&new));
        assert_eq!(replica_id(dir.path()).unwrap(), new);
    }
}
