//! A small QMP (QEMU Machine Protocol) client over a unix socket, enough to
//! drive `qemu-storage-daemon`: read the greeting, `qmp_capabilities`, then
//! one command at a time. QMP is JSON documents, one per line; replies carry
//! the `id` the command was sent with, and asynchronous events
//! (`{"event": …}`) may arrive between them — they are skipped here.
//! [`parse_message`] and [`block_jobs`] are pure and unit-tested.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

/// One message from the server.
#[derive(Clone, Debug, PartialEq)]
pub enum Message {
    /// `{"QMP": {...}}`: the greeting.
    Greeting(Value),
    /// `{"return": ..., "id": ...}`.
    Return {
        /// The command's id, if it had one.
        id: Option<Value>,
        /// The result.
        value: Value,
    },
    /// `{"error": {"class": ..., "desc": ...}, "id": ...}`.
    Error {
        /// The command's id.
        id: Option<Value>,
        /// Error class, e.g. `GenericError`.
        class: String,
        /// Human description.
        desc: String,
    },
    /// `{"event": NAME, "data": ...}`.
    Event {
        /// Event name, e.g. `BLOCK_JOB_READY`.
        name: String,
        /// Its data.
        data: Value,
    },
}

/// Parses one QMP line.
pub fn parse_message(line: &str) -> Result<Message> {
    let v: Value = serde_json::from_str(line).with_context(|| format!("QMP sent a line that is not JSON: {line}"))?;
    let id = v.get("id").cloned();
    if let Some(greeting) = v.get("QMP") {
        Ok(Message::Greeting(greeting.clone()))
    } else if let Some(value) = v.get("return") {
        Ok(Message::Return { id, value: value.clone() })
    } else if let Some(error) = v.get("error") {
        let text = |k: &str| error.get(k).and_then(Value::as_str).unwrap_or("").to_string();
        Ok(Message::Error { id, class: text("class"), desc: text("desc") })
    } else if let Some(name) = v.get("event").and_then(Value::as_str) {
        Ok(Message::Event { name: name.to_string(), data: v.get("data").cloned().unwrap_or(Value::Null) })
    } else {
        bail!("unknown QMP message: {line}")
    }
}

/// A block job as `query-block-jobs` reports it.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct BlockJob {
    /// Job id (`device`).
    pub device: String,
    /// Job type, e.g. `mirror`.
    pub kind: String,
    /// Whether a mirror job is ready (source and target in sync once).
    pub ready: bool,
    /// Bytes done so far.
    pub offset: u64,
    /// Bytes to do (grows as the source is written).
    pub len: u64,
    /// Job status, e.g. `running`, `ready`.
    pub status: String,
    /// Whether the job is doing I/O now.
    pub busy: bool,
}

impl BlockJob {
    /// Bytes the target is behind: `len - offset`.
    pub fn behind(&self) -> u64 {
        self.len.saturating_sub(self.offset)
    }
}

/// The jobs in a `query-block-jobs` return value.
pub fn block_jobs(value: &Value) -> Result<Vec<BlockJob>> {
    let list = value.as_array().with_context(|| format!("query-block-jobs returned no list: {value}"))?;
    list.iter()
        .map(|j| {
            let s = |k: &str| j.get(k).and_then(Value::as_str).unwrap_or("").to_string();
            let n = |k: &str| j.get(k).and_then(Value::as_u64).unwrap_or(0);
            let b = |k: &str| j.get(k).and_then(Value::as_bool).unwrap_or(false);
            if j.get("device").is_none() {
                bail!("block job without `device`: {j}");
            }
            Ok(BlockJob {
                device: s("device"),
                kind: s("type"),
                ready: b("ready"),
                offset: n("offset"),
                len: n("len"),
                status: s("status"),
                busy: b("busy"),
            })
        })
        .collect()
}

/// A QMP connection.
pub struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    next_id: u64,
}

impl Qmp {
    /// Connects to the socket at `path` (retrying until it exists, up to
    /// `timeout`), reads the greeting and negotiates capabilities.
    pub fn connect(path: &Path, timeout: Duration) -> Result<Qmp> {
        let started = Instant::now();
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e) if started.elapsed() > timeout => {
                    return Err(e).with_context(|| format!("connect to the QMP socket {}", path.display()));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        };
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        let writer = stream.try_clone()?;
        let mut qmp = Qmp { reader: BufReader::new(stream), writer, next_id: 1 };
        match qmp.next_message()? {
            Message::Greeting(_) => {}
            other => bail!("QMP did not greet first: {other:?}"),
        }
        qmp.execute("qmp_capabilities", None)?;
        Ok(qmp)
    }

    fn next_message(&mut self) -> Result<Message> {
        let mut line = String::new();
        let n = self.reader.read_line(&mut line).context("read from QMP")?;
        if n == 0 {
            bail!("QMP closed the connection");
        }
        parse_message(line.trim())
    }

    /// Runs `command` with `arguments` and returns its `return` value;
    /// a QMP error is an error naming the command.
    pub fn execute(&mut self, command: &str, arguments: Option<Value>) -> Result<Value> {
        let id = self.next_id;
        self.next_id += 1;
        let mut request = json!({ "execute": command, "id": id });
        if let Some(args) = arguments {
            request["arguments"] = args;
        }
        let mut line = serde_json::to_string(&request)?;
        line.push('\n');
        self.writer.write_all(line.as_bytes()).with_context(|| format!("send QMP `{command}`"))?;
        loop {
            match self.next_message()? {
                Message::Return { id: Some(got), value } if got == json!(id) => return Ok(value),
                Message::Error { id: Some(got), class, desc } if got == json!(id) => {
                    bail!("QMP `{command}` failed: {class}: {desc}")
                }
                Message::Event { .. } | Message::Return { .. } | Message::Error { .. } | Message::Greeting(_) => continue,
            }
        }
    }

    /// `query-block-jobs`.
    pub fn block_jobs(&mut self) -> Result<Vec<BlockJob>> {
        block_jobs(&self.execute("query-block-jobs", None)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_greeting_returns_errors_and_events() {
        let greeting =
            r#"{"QMP": {"version": {"qemu": {"micro": 2, "minor": 0, "major": 10}, "package": "Debian"}, "capabilities": ["oob"]}}"#;
        assert!(matches!(parse_message(greeting).unwrap(), Message::Greeting(_)));
        assert_eq!(parse_message(r#"{"return": {}, "id": 1}"#).unwrap(), Message::Return { id: Some(json!(1)), value: json!({}) });
        assert_eq!(parse_message(r#"{"return": {}}"#).unwrap(), Message::Return { id: None, value: json!({}) });
        let err = r#"{"id": 3, "error": {"class": "GenericError", "desc": "Cannot find device='nope' nor node-name='nope'"}}"#;
        assert_eq!(
            parse_message(err).unwrap(),
            Message::Error {
                id: Some(json!(3)),
                class: "GenericError".into(),
                desc: "Cannot find device='nope' nor node-name='nope'".into()
            }
        );
        let event = r#"{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "BLOCK_JOB_READY", "data": {"device": "geo", "len": 0, "offset": 0, "speed": 0, "type": "mirror"}}"#;
        match parse_message(event).unwrap() {
            Message::Event { name, data } => {
                assert_eq!(name, "BLOCK_JOB_READY");
                assert_eq!(data["device"], "geo");
            }
            other => panic!("{other:?}"),
        }
        assert!(parse_message("not json").is_err());
        assert!(parse_message(r#"{"what": 1}"#).is_err());
    }

    #[test]
    fn parses_query_block_jobs() {
        let v: Value = serde_json::from_str(
            r#"[{"auto-finalize": true, "io-status": "ok", "device": "geo", "auto-dismiss": true, "busy": false,
                 "len": 268435456, "offset": 268304384, "status": "ready", "paused": false, "speed": 0, "ready": true, "type": "mirror"}]"#,
        )
        .unwrap();
        let jobs = block_jobs(&v).unwrap();
        assert_eq!(jobs.len(), 1);
        let j = &jobs[0];
        assert_eq!((j.device.as_str(), j.kind.as_str(), j.ready, j.status.as_str(), j.busy), ("geo", "mirror", true, "ready", false));
        assert_eq!(j.behind(), 131072);
        assert!(block_jobs(&json!([])).unwrap().is_empty());
        assert!(block_jobs(&json!({})).is_err());
        assert!(block_jobs(&json!([{"len": 1}])).is_err());
    }

    #[test]
    fn a_session_against_a_fake_server() {
        use std::os::unix::net::UnixListener;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            let (s, _) = listener.accept().unwrap();
            let mut w = s.try_clone().unwrap();
            let mut r = BufReader::new(s);
            w.write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\r\n").unwrap();
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            assert!(line.contains("qmp_capabilities") && line.contains("\"id\":1"), "{line}");
            w.write_all(b"{\"return\": {}, \"id\": 1}\r\n").unwrap();
            line.clear();
            r.read_line(&mut line).unwrap();
            assert!(line.contains("query-block-jobs"), "{line}");
            // An event first, then the reply.
            w.write_all(b"{\"event\": \"JOB_STATUS_CHANGE\", \"data\": {\"status\": \"ready\", \"id\": \"geo\"}}\r\n").unwrap();
            w.write_all(
                b"{\"return\": [{\"device\": \"geo\", \"type\": \"mirror\", \"ready\": true, \"len\": 5, \"offset\": 5}], \"id\": 2}\r\n",
            )
            .unwrap();
            line.clear();
            r.read_line(&mut line).unwrap();
            w.write_all(b"{\"error\": {\"class\": \"GenericError\", \"desc\": \"bad\"}, \"id\": 3}\r\n").unwrap();
        });
        let mut qmp = Qmp::connect(&path, Duration::from_secs(5)).unwrap();
        let jobs = qmp.block_jobs().unwrap();
        assert!(jobs[0].ready && jobs[0].behind() == 0);
        let err = qmp.execute("blockdev-add", Some(json!({"driver": "nbd"}))).unwrap_err().to_string();
        assert!(err.contains("blockdev-add") && err.contains("bad"), "{err}");
        server.join().unwrap();
    }
}
