//! The data directory's secret files: written crash-safely with mode 0600, refused when
//! other users may read them, and checked on load, so that what loads is usable (an
//! admin token a client can send, a token key that is not a constant).
//!
//! Only `std`, `anyhow` and `rand` here: the `identity_files` fuzz target compiles this
//! file on its own (see `fuzz/`).

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::Path;

use anyhow::{Context as _, Result};
use rand::RngCore as _;

/// Shortest admin token accepted, in characters. A generated one has 64 hex digits; an
/// empty one would match an empty `Authorization: Bearer ` header.
pub const MIN_ADMIN_TOKEN_LEN: usize = 32;

/// Writes `data` to `path` crash-safely: a temporary file (mode 0600) is written and
/// fsynced, renamed over `path`, and the directory fsynced, so after a crash `path` holds
/// either nothing or all of `data`.
pub(crate) fn write_secret(path: &Path, data: &[u8]) -> Result<()> {
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = Path::new(&tmp_name);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(tmp)
        .with_context(|| format!("failed to create {}", tmp.display()))?;
    f.write_all(data)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("failed to write {}", tmp.display()))?;
    fs::rename(tmp, path).with_context(|| format!("failed to create {}", path.display()))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("failed to sync the directory {}", dir.display()))?;
    Ok(())
}

/// Reads a secret file, refusing one that others may read or write.
pub(crate) fn read_secret(path: &Path) -> Result<Vec<u8>> {
    let meta = fs::metadata(path).with_context(|| format!("failed to read {}", path.display()))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        anyhow::bail!(
            "{} is open to other users (mode {mode:04o}) but holds a secret: run `chmod 600 {}`",
            path.display(),
            path.display()
        );
    }
    fs::read(path).with_context(|| format!("failed to read {}", path.display()))
}

pub(crate) fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Whether an HTTP client can send `b` in a header value: what the API's
/// `HeaderValue::to_str` accepts (visible ASCII, space and tab).
pub(crate) fn header_safe(b: u8) -> bool {
    b == b'\t' || (0x20..0x7f).contains(&b)
}

/// The REST API's bearer token in `dir`, generated on first start; a short one, or one
/// no client could send, is refused.
pub(crate) fn admin_token(dir: &Path) -> Result<String> {
    let path = dir.join("admin-token");
    if !path.exists() {
        let mut b = [0u8; 32];
        rand::rng().fill_bytes(&mut b);
        write_secret(&path, format!("{}\n", hex(&b)).as_bytes())?;
    }
    let text = String::from_utf8(read_secret(&path)?)
        .with_context(|| format!("{} is not text", path.display()))?;
    let token = text.trim();
    if token.len() < MIN_ADMIN_TOKEN_LEN {
        anyhow::bail!(
            "{} holds {} characters, but an admin token needs at least {MIN_ADMIN_TOKEN_LEN} \
             (an empty or short one is guessable). Delete the file to have a random one \
             generated at the next start, or write a longer random token into it.",
            path.display(),
            token.len()
        );
    }
    // The API compares the token with an `Authorization` header, which carries only
    // printable ASCII: a token with anything else could never be presented.
    if !token.bytes().all(header_safe) {
        anyhow::bail!(
            "{} holds characters an HTTP header cannot carry (only printable ASCII can be \
             sent as a bearer token). Delete the file to have a random one generated at \
             the next start, or write a printable ASCII token into it.",
            path.display()
        );
    }
    Ok(token.to_owned())
}

/// The key tokens are derived from, in `dir`, generated on first start: exactly 32
/// random bytes.
pub(crate) fn token_key(dir: &Path) -> Result<[u8; 32]> {
    let path = dir.join("token-key");
    if !path.exists() {
        let mut b = [0u8; 32];
        rand::rng().fill_bytes(&mut b);
        write_secret(&path, &b)?;
    }
    let bytes = read_secret(&path)?;
    let fix = "Restore it from a backup of this data dir (every token derives from it); only \
               if no token was ever issued, delete it to have a new one generated.";
    let key: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
        anyhow::anyhow!(
            "{} holds {} bytes, but a token key is exactly 32 random bytes. {fix}",
            path.display(),
            bytes.len()
        )
    })?;
    if key.iter().all(|b| *b == key[0]) {
        anyhow::bail!(
            "{} holds the same byte 32 times, not a random key. {fix}",
            path.display()
        );
    }
    Ok(key)
}
