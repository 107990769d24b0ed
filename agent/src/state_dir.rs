//! The agent's state directory: its persistent replica id (so the coordinator gives it
//! the same Mesh IP after a restart) and its status socket.

use std::{
    io::Write,
    path::{Path, PathBuf},
};

use anyhow::Context;

const REPLICA_ID_FILE: &str = "replica-id";
const STATUS_SOCKET: &str = "agent.sock";

/// The status socket inside `state_dir`.
pub fn status_socket(state_dir: &Path) -> PathBuf {
    state_dir.join(STATUS_SOCKET)
}

/// Reads the replica id kept in `state_dir`, or creates and stores a new one. The file is
/// written to a temporary name and renamed, so a crash never leaves a half-written id.
pub fn replica_id(state_dir: &Path) -> anyhow::Result<String> {
    std::fs::create_dir_all(state_dir)
        .with_context(|| format!("failed to create the state dir {}", state_dir.display()))?;
    let path = state_dir.join(REPLICA_ID_FILE);
    match std::fs::read_to_string(&path) {
        Ok(id) if !id.trim().is_empty() => return Ok(id.trim().to_owned()),
        Ok(_) => {}
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
}
