//! Support archives ("sysdumps") of the coordinator and the agent: one `tar.gz` of text
//! files under a single top directory, with secrets redacted from every file on the way
//! in. Collecting what goes in is the callers' business; this crate only makes sure that
//! nothing it writes carries a secret it was told about, a meshgate token, or the value of
//! a setting whose name says it is secret.

use std::io::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use flate2::{Compression, write::GzEncoder};

/// What replaces a redacted secret.
pub const REDACTED: &str = "[REDACTED]";

/// Every meshgate token starts with these characters: the base64url of its `MGT` magic.
const TOKEN_PREFIX: &str = "TUdU";
/// Shorter strings are not treated as secrets (they would redact ordinary words).
const MIN_SECRET_LEN: usize = 8;

/// A support archive being written.
pub struct Archive {
    tar: tar::Builder<GzEncoder<Vec<u8>>>,
    top: String,
    secrets: Vec<String>,
    mtime: u64,
    names: Vec<String>,
}

impl Archive {
    /// An empty archive whose files live under `top/`, redacting `secrets` (and every
    /// token and secret-named setting) from everything added.
    pub fn new(top: &str, secrets: impl IntoIterator<Item = String>) -> Self {
        let mut secrets: Vec<String> = secrets
            .into_iter()
            .map(|s| s.trim().to_owned())
            .filter(|s| s.len() >= MIN_SECRET_LEN)
            .collect();
        // Longest first, so a secret that contains another is replaced whole.
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        Self {
            tar: tar::Builder::new(GzEncoder::new(Vec::new(), Compression::default())),
            top: top.to_owned(),
            secrets,
            mtime: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            names: Vec::new(),
        }
    }

    /// Adds `name` (a path below the top directory) with `text`, redacted.
    pub fn text(&mut self, name: &str, text: &str) -> std::io::Result<()> {
        let clean = redact(text, &self.secrets);
        let mut header = tar::Header::new_gnu();
        header.set_size(clean.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(self.mtime);
        header.set_entry_type(tar::EntryType::Regular);
        self.tar.append_data(
            &mut header,
            format!("{}/{name}", self.top),
            clean.as_bytes(),
        )?;
        self.names.push(name.to_owned());
        Ok(())
    }

    /// Adds `name` with `value` as pretty JSON, redacted.
    pub fn json(&mut self, name: &str, value: &serde_json::Value) -> std::io::Result<()> {
        let text = serde_json::to_string_pretty(value).map_err(std::io::Error::other)?;
        self.text(name, &format!("{text}\n"))
    }

    /// Finishes the archive (with an index of its files) and returns the `tar.gz` bytes.
    pub fn finish(mut self) -> std::io::Result<Vec<u8>> {
        let index = self.names.join("\n") + "\nINDEX\n";
        self.text("INDEX", &index)?;
        let mut gz = self.tar.into_inner()?;
        gz.flush()?;
        gz.finish()
    }
}

/// This host's kernel release and build, OS and hostname, for `versions.json`.
pub fn host_info() -> serde_json::Map<String, serde_json::Value> {
    let read = |p: &str| {
        std::fs::read_to_string(p)
            .unwrap_or_default()
            .trim()
            .to_owned()
    };
    let os = read("/etc/os-release")
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim_matches('"').to_owned());
    let mut m = serde_json::Map::new();
    m.insert("kernel".into(), read("/proc/sys/kernel/osrelease").into());
    m.insert(
        "kernel_build".into(),
        read("/proc/sys/kernel/version").into(),
    );
    m.insert("os".into(), os.into());
    m.insert("hostname".into(), read("/proc/sys/kernel/hostname").into());
    m
}

/// The entries of `dir` with their modes and sizes, never their contents.
pub fn dir_listing(dir: &std::path::Path) -> String {
    use std::os::unix::fs::PermissionsExt as _;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return format!("{}: unreadable\n", dir.display());
    };
    let mut rows: Vec<String> = entries
        .flatten()
        .filter_map(|e| {
            let m = e.metadata().ok()?;
            let mode = m.permissions().mode() & 0o7777;
            Some(format!(
                "{mode:04o} {:>12} {}",
                m.len(),
                e.file_name().to_string_lossy()
            ))
        })
        .collect();
    rows.sort();
    format!("{}\n{}\n", dir.display(), rows.join("\n"))
}

/// `text` with every secret, every meshgate token, every value of a `KEY=value` or
/// `"key": "value"` whose key names a secret, and every argument after a secret flag
/// (`--token X`) replaced by [`REDACTED`].
pub fn redact(text: &str, secrets: &[String]) -> String {
    let mut out = text.to_owned();
    for s in secrets {
        out = out.replace(s.as_str(), REDACTED);
    }
    let out = redact_tokens(&out);
    out.lines().map(redact_line).collect::<Vec<_>>().join("\n")
        + if text.ends_with('\n') { "\n" } else { "" }
}

/// Whether a setting called `key` holds a secret (a path to one, `*_FILE`, does not).
pub fn secret_name(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    let k = k.trim_matches(|c: char| c == '"' || c == '-' || c.is_whitespace());
    !k.ends_with("_file")
        && !k.ends_with("-file")
        && [
            "token",
            "secret",
            "password",
            "passwd",
            "private_key",
            "key_pem",
        ]
        .iter()
        .any(|w| k.contains(w))
}

fn redact_tokens(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(TOKEN_PREFIX) {
        let (before, from) = rest.split_at(at);
        out.push_str(before);
        let len = from
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
            .unwrap_or(from.len());
        // Real tokens are long; a short match is a word that happens to start alike.
        if len >= 32 {
            out.push_str(REDACTED);
        } else {
            out.push_str(&from[..len.max(TOKEN_PREFIX.len())]);
        }
        rest = &from[len.max(TOKEN_PREFIX.len())..];
    }
    out.push_str(rest);
    out
}

fn redact_line(line: &str) -> String {
    // KEY=value (env files, `env` output) and "key": "value" (JSON).
    for (sep, json) in [("=", false), ("\": ", true)] {
        let Some((key, value)) = line.split_once(sep) else {
            continue;
        };
        let k = key.trim().trim_start_matches(['{', '[', ' ']);
        let v = value.trim();
        // A JSON key is quoted and its secret value a string; an env key is one word.
        let shaped = if json {
            k.starts_with('"') && v.starts_with('"')
        } else {
            !k.is_empty() && !k.contains(' ') && !v.is_empty()
        };
        if shaped && secret_name(k) {
            let comma = if value.trim_end().ends_with(',') {
                ","
            } else {
                ""
            };
            let quote = if json { "\"" } else { "" };
            return format!("{key}{sep}{quote}{REDACTED}{quote}{comma}");
        }
    }
    // Flags: `--token X` (the value is the next word).
    let words: Vec<&str> = line.split(' ').collect();
    let mut out = Vec::with_capacity(words.len());
    let mut hide_next = false;
    for w in words {
        if hide_next && !w.is_empty() {
            out.push(REDACTED);
            hide_next = false;
            continue;
        }
        hide_next = w.starts_with("--") && !w.contains('=') && secret_name(w);
        out.push(w);
    }
    out.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "TUdUAQHAr5OYts1PD6e90LX4A7ivA08TiIW-HNQAsSbxixEiQi3abc";

    #[test]
    fn secrets_tokens_and_secret_settings_are_redacted() {
        let secrets = vec!["s3cr3t-admin-token".to_owned()];
        let text = format!(
            "admin s3cr3t-admin-token here\nlog: joined with {TOKEN}.\n\
             MESHGATE_TOKEN=abc123456789\nMESHGATE_TOKEN_FILE=/etc/meshgate/token\n\
             args: run --token xyz987654321 --state-dir /var/lib/meshgate\n\
             {{\"admin_token\": \"zzzzzzzzzz\",\n  \"name\": \"web\"}}\nTUdU is a word\n"
        );
        let out = redact(&text, &secrets);
        for gone in [
            "s3cr3t-admin-token",
            TOKEN,
            "abc123456789",
            "xyz987654321",
            "zzzzzzzzzz",
        ] {
            assert!(!out.contains(gone), "{gone} survived:\n{out}");
        }
        for kept in [
            "MESHGATE_TOKEN_FILE=/etc/meshgate/token",
            "--state-dir /var/lib/meshgate",
            "\"name\": \"web\"",
            "TUdU is a word",
        ] {
            assert!(out.contains(kept), "{kept} was lost:\n{out}");
        }
        assert!(out.ends_with('\n'));
    }

    #[test]
    fn an_archive_holds_redacted_files_and_an_index() {
        let mut a = Archive::new("dump", ["the-secret-value".to_owned()]);
        a.text("a.txt", "x the-secret-value y\n").unwrap();
        a.json(
            "b.json",
            &serde_json::json!({"password": "hunter22", "n": 1}),
        )
        .unwrap();
        let bytes = a.finish().unwrap();
        let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(&bytes[..]));
        let mut seen = Vec::new();
        for e in tar.entries().unwrap() {
            let mut e = e.unwrap();
            let mut s = String::new();
            std::io::Read::read_to_string(&mut e, &mut s).unwrap();
            assert!(
                !s.contains("the-secret-value") && !s.contains("hunter22"),
                "{s}"
            );
            seen.push(e.path().unwrap().display().to_string());
        }
        assert_eq!(seen, ["dump/a.txt", "dump/b.json", "dump/INDEX"]);
    }
}
