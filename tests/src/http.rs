//! A minimal HTTP/1.1 client for the coordinator's REST API, run inside the coordinator's
//! namespace (the API listens on its loopback). Enough for JSON requests in tests; not a
//! general client.

use std::{
    io::{Read, Write},
    net::TcpStream,
    time::Duration,
};

use anyhow::{Context, bail};

use crate::Netns;

/// A JSON response: status code and parsed body.
#[derive(Debug, Clone)]
pub struct Response {
    /// HTTP status code.
    pub status: u16,
    /// The body, parsed as JSON (`Null` when empty or not JSON).
    pub body: serde_json::Value,
}

impl Response {
    /// The envelope's `result`, or an error with the envelope's messages on failure.
    pub fn result(&self) -> anyhow::Result<&serde_json::Value> {
        if !(200..300).contains(&self.status)
            || self.body["success"] != serde_json::Value::Bool(true)
        {
            bail!("API call failed with {}: {}", self.status, self.body);
        }
        Ok(&self.body["result"])
    }
}

/// The coordinator's REST API, reached from inside `ns` at `addr` with a bearer token.
pub struct Api<'a> {
    ns: &'a Netns,
    addr: String,
    token: String,
}

impl<'a> Api<'a> {
    /// An API client for `addr` (`HOST:PORT`) inside `ns`.
    pub fn new(ns: &'a Netns, addr: &str, token: &str) -> Self {
        Self {
            ns,
            addr: addr.to_owned(),
            token: token.trim().to_owned(),
        }
    }

    /// `GET path`.
    pub fn get(&self, path: &str) -> anyhow::Result<Response> {
        self.call("GET", path, None)
    }

    /// `POST path` with a JSON body.
    pub fn post(&self, path: &str, body: &serde_json::Value) -> anyhow::Result<Response> {
        self.call("POST", path, Some(body))
    }

    /// `DELETE path`.
    pub fn delete(&self, path: &str) -> anyhow::Result<Response> {
        self.call("DELETE", path, None)
    }

    /// Any call; `token: None` in [`Api::call_as`] sends no Authorization header.
    pub fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> anyhow::Result<Response> {
        self.call_as(Some(&self.token), method, path, body)
    }

    /// A call with another bearer token (or none), for authorization tests.
    pub fn call_as(
        &self,
        token: Option<&str>,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> anyhow::Result<Response> {
        let body = body.map(serde_json::Value::to_string).unwrap_or_default();
        let auth = token
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.addr,
            body.len()
        );
        let addr = self.addr.clone();
        let raw = self.ns.enter(move || -> anyhow::Result<Vec<u8>> {
            let mut stream = TcpStream::connect(&addr)
                .with_context(|| format!("failed to connect to {addr}"))?;
            stream.set_read_timeout(Some(Duration::from_secs(10)))?;
            stream.write_all(request.as_bytes())?;
            let mut raw = Vec::new();
            stream.read_to_end(&mut raw)?;
            Ok(raw)
        })??;
        parse(&raw).with_context(|| format!("{method} {path}"))
    }
}

fn parse(raw: &[u8]) -> anyhow::Result<Response> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .context("no end of headers in the response")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no status code in the response")?;
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Ok(Response {
        status,
        body: serde_json::from_str(&body).unwrap_or(serde_json::Value::Null),
    })
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_and_chunked_responses() {
        let plain =
            parse(b"HTTP/1.1 201 Created\r\ncontent-length: 16\r\n\r\n{\"success\":true}").unwrap();
        assert_eq!(plain.status, 201);
        assert_eq!(plain.body["success"], true);
        let chunked =
            parse(b"HTTP/1.1 400 Bad Request\r\ntransfer-encoding: chunked\r\n\r\n5\r\n{\"a\":\r\n2\r\n1}\r\n0\r\n\r\n").unwrap();
        assert_eq!(chunked.status, 400);
        assert_eq!(chunked.body["a"], 1);
    }
}
