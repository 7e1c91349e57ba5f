//! A minimal HTTP/1.1 client for the control API, used by the CLI subcommands and tests.
//!
//! Hand-written on purpose: one request per connection (`Connection: close`), JSON bodies,
//! plain TCP to a trusted address. It pulls in no TLS stack (the project must carry exactly one
//! rustls crypto provider) and no HTTP client crate.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::limits::{CONTROL_REQUEST_TIMEOUT, CONTROL_RESPONSE_BYTES_MAX};
use crate::settings::LinkUpdate;
use crate::status::{Direction, LinkStatus, PartitionMode, PartitionRequest};

/// Why a control request failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// Connecting, sending or receiving failed.
    #[error("talk to the control API at {addr}: {source}")]
    Io {
        /// The control address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// No complete answer within [`CONTROL_REQUEST_TIMEOUT`].
    #[error("no answer from the control API at {addr} within {timeout:?}")]
    Timeout {
        /// The control address.
        addr: SocketAddr,
        /// The deadline.
        timeout: std::time::Duration,
    },
    /// The answer is not HTTP we understand, or is too large.
    #[error("malformed answer from the control API: {0}")]
    Malformed(String),
    /// The API answered with an error status.
    #[error("control API answered {status}: {message}")]
    Status {
        /// HTTP status code.
        status: u16,
        /// The `error` field of the body, or the body.
        message: String,
    },
    /// The answer's JSON does not have the expected shape.
    #[error("unexpected JSON from the control API: {0}")]
    Json(#[from] serde_json::Error),
}

/// A client of one simulator's control API.
#[derive(Debug, Clone)]
pub struct ControlClient {
    addr: SocketAddr,
    /// Sent as `Authorization: Bearer <token>` (a geomirror node's admin
    /// API may require one).
    token: Option<String>,
}

impl ControlClient {
    /// A client for the control API at `addr`.
    pub fn new(addr: SocketAddr) -> Self {
        ControlClient { addr, token: None }
    }

    /// The same client, sending `token` as a bearer token.
    pub fn with_token(mut self, token: Option<String>) -> Self {
        self.token = token;
        self
    }

    /// `GET /link`, typed.
    pub async fn status(&self) -> Result<LinkStatus, ControlError> {
        Ok(serde_json::from_value(self.request("GET", "/link", None).await?)?)
    }

    /// `PUT /link`.
    pub async fn update(&self, update: &LinkUpdate) -> Result<LinkStatus, ControlError> {
        let body = serde_json::to_string(update)?;
        Ok(serde_json::from_value(self.request("PUT", "/link", Some(body)).await?)?)
    }

    /// `POST /partition`.
    pub async fn partition(&self, mode: PartitionMode, direction: Direction) -> Result<LinkStatus, ControlError> {
        let body = serde_json::to_string(&PartitionRequest { mode, direction })?;
        Ok(serde_json::from_value(self.request("POST", "/partition", Some(body)).await?)?)
    }

    /// `POST /heal`.
    pub async fn heal(&self) -> Result<LinkStatus, ControlError> {
        Ok(serde_json::from_value(self.request("POST", "/heal", None).await?)?)
    }

    /// `POST /reset`.
    pub async fn reset(&self) -> Result<LinkStatus, ControlError> {
        Ok(serde_json::from_value(self.request("POST", "/reset", None).await?)?)
    }

    /// Sends one request and returns the JSON body of a 2xx answer.
    pub async fn request(&self, method: &str, path: &str, body: Option<String>) -> Result<serde_json::Value, ControlError> {
        let exchange = self.exchange(method, path, body.unwrap_or_default());
        let raw = tokio::time::timeout(CONTROL_REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| ControlError::Timeout { addr: self.addr, timeout: CONTROL_REQUEST_TIMEOUT })?
            .map_err(|source| ControlError::Io { addr: self.addr, source })?;
        let (status, body) = parse_response(&raw)?;
        if !(200..300).contains(&status) {
            let message = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
                .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
            return Err(ControlError::Status { status, message });
        }
        Ok(serde_json::from_slice(&body)?)
    }

    async fn exchange(&self, method: &str, path: &str, body: String) -> std::io::Result<Vec<u8>> {
        let mut stream = TcpStream::connect(self.addr).await?;
        let authorization = self.token.as_ref().map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n{authorization}\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.addr,
            body.len()
        );
        stream.write_all(request.as_bytes()).await?;
        let mut raw = Vec::new();
        // One byte over the limit tells "too large" apart from "exactly at the limit".
        (&mut stream).take(CONTROL_RESPONSE_BYTES_MAX + 1).read_to_end(&mut raw).await?;
        Ok(raw)
    }
}

/// Splits an HTTP/1.1 answer into status code and body (handles `Content-Length`, chunked
/// transfer coding, and read-to-close).
fn parse_response(raw: &[u8]) -> Result<(u16, Vec<u8>), ControlError> {
    let malformed = |what: &str| ControlError::Malformed(what.to_owned());
    if raw.len() as u64 > CONTROL_RESPONSE_BYTES_MAX {
        return Err(malformed("answer larger than the limit"));
    }
    let head_end = raw.windows(4).position(|w| w == b"\r\n\r\n").ok_or_else(|| malformed("no end of headers"))?;
    let head = std::str::from_utf8(&raw[..head_end]).map_err(|_| malformed("headers not UTF-8"))?;
    let rest = &raw[head_end + 4..];
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.split_whitespace();
    if !parts.next().is_some_and(|v| v.starts_with("HTTP/1.")) {
        return Err(malformed("not an HTTP/1 status line"));
    }
    let status: u16 = parts.next().and_then(|s| s.parse().ok()).ok_or_else(|| malformed("no status code"))?;
    let mut content_length = None;
    let mut chunked = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            content_length = Some(value.parse::<usize>().map_err(|_| malformed("bad Content-Length"))?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.to_ascii_lowercase().contains("chunked");
        }
    }
    let body = if chunked {
        decode_chunked(rest).ok_or_else(|| malformed("bad chunked body"))?
    } else if let Some(len) = content_length {
        rest.get(..len).ok_or_else(|| malformed("body shorter than Content-Length"))?.to_vec()
    } else {
        rest.to_vec()
    };
    Ok((status, body))
}

fn decode_chunked(mut rest: &[u8]) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line_end = rest.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&rest[..line_end]).ok()?;
        let size_text = size_text.split(';').next()?.trim();
        let size = usize::from_str_radix(size_text, 16).ok()?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Some(body);
        }
        body.extend_from_slice(rest.get(..size)?);
        rest = rest.get(size + 2..)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_content_length_answers() {
        let raw = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-type: x\r\n\r\n{}trailing";
        assert_eq!(parse_response(raw).unwrap(), (200, b"{}".to_vec()));
    }

    #[test]
    fn parses_chunked_answers() {
        let raw = b"HTTP/1.1 422 X\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n";
        assert_eq!(parse_response(raw).unwrap(), (422, b"abcde".to_vec()));
    }

    #[test]
    fn rejects_garbage_without_panicking() {
        for raw in [
            &b""[..],
            b"garbage",
            b"HTTP/1.1\r\n\r\n",
            b"SMTP 200\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n{}",
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffff\r\nab",
            b"\xff\xfe\r\n\r\n",
        ] {
            assert!(parse_response(raw).is_err(), "{raw:?}");
        }
    }
}
