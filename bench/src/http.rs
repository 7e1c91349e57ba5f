//! A minimal blocking HTTP/1.1 client for the JSON and text endpoints the
//! benchmark reads: a node's `/status` and `/metrics`, and the WAN
//! simulator's control API (`/link`, `/partition`, `/heal`). One request per
//! connection (`Connection: close`), loopback only, a deadline on every
//! socket operation. No new dependencies: std `TcpStream` and a small
//! response parser ([`parse_response`], unit-tested).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use anyhow::{Context, Result, bail};

/// Deadline for connecting and for each read/write of one request.
const TIMEOUT: Duration = Duration::from_secs(5);
/// Largest response accepted (a `/metrics` page is a few tens of KiB).
const MAX_RESPONSE_BYTES: usize = 8 << 20;

/// A parsed response.
#[derive(Debug, PartialEq, Eq)]
pub struct Response {
    /// Status code, e.g. 200.
    pub status: u16,
    /// The body, with chunked transfer coding removed.
    pub body: String,
}

/// Sends `method path` to `addr` (`127.0.0.1:PORT`) with an optional JSON
/// body and returns the response. Fails on a non-2xx status, naming it and
/// the body.
pub fn request(addr: &str, method: &str, path: &str, json_body: Option<&str>) -> Result<Response> {
    let socket: std::net::SocketAddr = addr.parse().with_context(|| format!("`{addr}` is not an IP:PORT address"))?;
    let mut stream = TcpStream::connect_timeout(&socket, TIMEOUT).with_context(|| format!("connect to http://{addr}"))?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.set_write_timeout(Some(TIMEOUT))?;
    let body = json_body.unwrap_or("");
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAccept: */*\r\n");
    if json_body.is_some() || method != "GET" {
        head.push_str(&format!("Content-Type: application/json\r\nContent-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    head.push_str(body);
    stream.write_all(head.as_bytes()).with_context(|| format!("send {method} http://{addr}{path}"))?;
    let mut raw = Vec::new();
    stream
        .take(MAX_RESPONSE_BYTES as u64 + 1)
        .read_to_end(&mut raw)
        .with_context(|| format!("read the response to {method} http://{addr}{path}"))?;
    if raw.len() > MAX_RESPONSE_BYTES {
        bail!("the response to {method} http://{addr}{path} exceeds {MAX_RESPONSE_BYTES} bytes");
    }
    let response = parse_response(&raw).with_context(|| format!("parse the response to {method} http://{addr}{path}"))?;
    if !(200..300).contains(&response.status) {
        bail!("{method} http://{addr}{path} answered {}: {}", response.status, response.body.trim());
    }
    Ok(response)
}

/// `GET path` → body.
pub fn get(addr: &str, path: &str) -> Result<String> {
    Ok(request(addr, "GET", path, None)?.body)
}

/// Parses a whole HTTP/1.x response read until the server closed the
/// connection: status line, headers, then a body delimited by
/// `Content-Length`, chunked coding, or the end of the data.
pub fn parse_response(raw: &[u8]) -> Result<Response> {
    let head_end = raw.windows(4).position(|w| w == b"\r\n\r\n").context("no end of headers (\\r\\n\\r\\n)")?;
    let head = std::str::from_utf8(&raw[..head_end]).context("headers are not UTF-8")?;
    let rest = &raw[head_end + 4..];
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or("");
    if !version.starts_with("HTTP/1.") {
        bail!("not an HTTP/1.x status line: `{status_line}`");
    }
    let status: u16 = parts.next().and_then(|s| s.parse().ok()).with_context(|| format!("no status code in `{status_line}`"))?;
    let mut content_length = None;
    let mut chunked = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else { continue };
        let (name, value) = (name.trim().to_ascii_lowercase(), value.trim());
        if name == "content-length" {
            content_length = Some(value.parse::<usize>().with_context(|| format!("bad Content-Length `{value}`"))?);
        } else if name == "transfer-encoding" && value.to_ascii_lowercase().contains("chunked") {
            chunked = true;
        }
    }
    let body = if chunked {
        decode_chunked(rest)?
    } else if let Some(len) = content_length {
        if rest.len() < len {
            bail!("body truncated: {} of {len} bytes", rest.len());
        }
        rest[..len].to_vec()
    } else {
        rest.to_vec()
    };
    Ok(Response { status, body: String::from_utf8(body).context("body is not UTF-8")? })
}

/// Removes chunked transfer coding (trailers are ignored).
fn decode_chunked(mut data: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = data.windows(2).position(|w| w == b"\r\n").context("chunk size line not terminated")?;
        let size_text = std::str::from_utf8(&data[..line_end]).context("chunk size is not UTF-8")?;
        let size_hex = size_text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_hex, 16).with_context(|| format!("bad chunk size `{size_text}`"))?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        if data.len() < size + 2 {
            bail!("chunk truncated: {} bytes left, chunk of {size}", data.len());
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_length_body() {
        let raw = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 7\r\n\r\n{\"a\":1}";
        assert_eq!(parse_response(raw).unwrap(), Response { status: 200, body: "{\"a\":1}".into() });
        let truncated = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc";
        assert!(parse_response(truncated).unwrap_err().to_string().contains("truncated"));
    }

    #[test]
    fn chunked_body_and_body_until_close() {
        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nWiki\r\n6;ext=1\r\npedia \r\n0\r\n\r\n";
        assert_eq!(parse_response(raw).unwrap().body, "Wikipedia ");
        let raw = b"HTTP/1.0 422 Unprocessable Entity\r\nServer: x\r\n\r\n{\"error\":\"bad\"}";
        assert_eq!(parse_response(raw).unwrap(), Response { status: 422, body: "{\"error\":\"bad\"}".into() });
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(parse_response(b"hello").is_err());
        assert!(parse_response(b"SSH-2.0 x\r\n\r\n").is_err());
        assert!(parse_response(b"HTTP/1.1 abc OK\r\n\r\n").is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n").is_err());
    }

    #[test]
    fn a_request_round_trip_against_a_tiny_server() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut req = Vec::new();
            let mut buf = [0u8; 4096];
            while !req.ends_with(b"{}") {
                let n = s.read(&mut buf).unwrap();
                assert!(n > 0, "client closed early");
                req.extend_from_slice(&buf[..n]);
            }
            let req = String::from_utf8_lossy(&req).into_owned();
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").unwrap();
            req
        });
        assert_eq!(request(&addr, "POST", "/heal", Some("{}")).unwrap().body, "ok");
        let req = server.join().unwrap();
        assert!(req.starts_with("POST /heal HTTP/1.1\r\n") && req.contains("Content-Length: 2") && req.ends_with("\r\n\r\n{}"), "{req}");
    }
}
