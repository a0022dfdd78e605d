//! An HTTP/1.1 proxy between the collector and the Kinesis server that breaks PutRecords
//! calls on purpose, in a fixed rotation: 500 errors, connection resets, partial failures
//! (only some records forwarded, the others answered as throttled), whole-request
//! throttling, a response dropped after the server stored the records, and once a silent
//! hang past the client's timeout. It counts what it did, so a test can check that every
//! fault happened and that duplicates came only from dropped responses.
//!
//! Written for these tests (not a mock of Kinesis: the records that pass through are stored
//! by the real server and read back from it).

use std::{
    io::{BufRead as _, BufReader, Read as _},
    net::{Shutdown, TcpListener, TcpStream},
    sync::{Arc, Mutex},
    time::Duration,
};

use serde_json::{Value, json};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    Pass,
    /// 500 InternalFailure, nothing forwarded.
    ServerError,
    /// The connection is reset before anything is forwarded.
    Reset,
    /// Odd-numbered records are not forwarded and come back as throttled.
    Partial,
    /// 400 ProvisionedThroughputExceededException for the whole call, nothing forwarded.
    Throttle,
    /// Forwarded and stored, then the connection closes without an answer: the client
    /// cannot know, and sends the records again.
    DropResponse,
    /// No answer until after the client's timeout, nothing forwarded.
    Hang,
}

/// What the proxy did.
#[derive(Debug, Default, Clone)]
pub struct Stats {
    pub put_records_calls: u64,
    pub faults: Vec<Fault>,
    /// Records stored by the server whose response was dropped: the duplicates the
    /// collector may legitimately send.
    pub dropped_response_records: u64,
    /// Records answered as failed in partial failures.
    pub records_failed: u64,
}

impl Stats {
    pub fn count(&self, fault: Fault) -> usize {
        self.faults.iter().filter(|f| **f == fault).count()
    }
}

pub struct FaultProxy {
    pub port: u16,
    pub stats: Arc<Mutex<Stats>>,
}

/// The fault for the n-th PutRecords call (from 0): a mix with passes between, so the
/// stream keeps moving, and one hang.
fn plan(n: u64) -> Fault {
    if n == 9 {
        return Fault::Hang;
    }
    match n % 8 {
        1 => Fault::ServerError,
        2 => Fault::Reset,
        3 => Fault::Partial,
        5 => Fault::Throttle,
        6 => Fault::DropResponse,
        _ => Fault::Pass,
    }
}

impl FaultProxy {
    /// Listens on a free port of 127.0.0.1 and forwards to port `upstream` of the servers'
    /// host.
    pub fn start(upstream: u16, hang_for: Duration) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let port = listener.local_addr().expect("addr").port();
        let stats = Arc::new(Mutex::new(Stats::default()));
        let shared = stats.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let stats = shared.clone();
                std::thread::spawn(move || serve(client, upstream, hang_for, &stats));
            }
        });
        FaultProxy { port, stats }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn stats(&self) -> Stats {
        self.stats.lock().expect("stats").clone()
    }
}

struct Message {
    /// Request or status line.
    first: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Message {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The message with `body`, its length set and `connection` as its Connection header.
    fn write_to(&self, out: &mut impl std::io::Write, body: &[u8], connection: &str) -> std::io::Result<()> {
        let mut head = format!("{}\r\n", self.first);
        for (k, v) in &self.headers {
            if !["content-length", "transfer-encoding", "connection"].contains(&k.to_ascii_lowercase().as_str()) {
                head.push_str(&format!("{k}: {v}\r\n"));
            }
        }
        head.push_str(&format!("Content-Length: {}\r\nConnection: {connection}\r\n\r\n", body.len()));
        out.write_all(head.as_bytes())?;
        out.write_all(body)?;
        out.flush()
    }
}

/// Reads one message; None at a clean end of the connection. `to_eof`: without a length,
/// the body runs to the end of the connection (a response).
fn read_message(input: &mut BufReader<TcpStream>, to_eof: bool) -> std::io::Result<Option<Message>> {
    let mut first = String::new();
    if input.read_line(&mut first)? == 0 {
        return Ok(None);
    }
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        input.read_line(&mut line)?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.push((k.trim().to_owned(), v.trim().to_owned()));
        }
    }
    let mut message = Message { first: first.trim_end().to_owned(), headers, body: Vec::new() };
    if let Some(len) = message.header("content-length") {
        let len: usize = len.parse().map_err(|_| std::io::Error::other("bad content-length"))?;
        message.body.resize(len, 0);
        input.read_exact(&mut message.body)?;
    } else if message.header("transfer-encoding").is_some_and(|t| t.eq_ignore_ascii_case("chunked")) {
        loop {
            let mut size = String::new();
            input.read_line(&mut size)?;
            let size = usize::from_str_radix(size.trim().split(';').next().unwrap_or(""), 16)
                .map_err(|_| std::io::Error::other("bad chunk size"))?;
            let mut chunk = vec![0; size + 2];
            input.read_exact(&mut chunk)?;
            if size == 0 {
                break;
            }
            message.body.extend_from_slice(&chunk[..size]);
        }
    } else if to_eof {
        input.read_to_end(&mut message.body)?;
    }
    Ok(Some(message))
}

/// One round trip to the server on a connection of its own.
fn forward(request: &Message, body: &[u8], upstream: u16) -> std::io::Result<Message> {
    let stream = TcpStream::connect((crate::servers::host(), upstream))?;
    let mut writer = stream.try_clone()?;
    request.write_to(&mut writer, body, "close")?;
    read_message(&mut BufReader::new(stream), true)?.ok_or_else(|| std::io::Error::other("no response"))
}

fn answer(client: &mut TcpStream, status: &str, body: &Value) -> std::io::Result<()> {
    let response = Message {
        first: format!("HTTP/1.1 {status}"),
        headers: vec![("Content-Type".into(), "application/x-amz-json-1.1".into())],
        body: Vec::new(),
    };
    response.write_to(client, body.to_string().as_bytes(), "keep-alive")
}

fn reset(client: &TcpStream) {
    // Linger 0: close sends RST instead of FIN.
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    use std::os::fd::AsRawFd as _;
    unsafe {
        libc::setsockopt(
            client.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            size_of::<libc::linger>() as u32,
        );
    }
    let _ = client.shutdown(Shutdown::Both);
}

fn serve(client: TcpStream, upstream: u16, hang_for: Duration, stats: &Mutex<Stats>) {
    let Ok(mut out) = client.try_clone() else { return };
    let mut input = BufReader::new(client);
    while let Ok(Some(request)) = read_message(&mut input, false) {
        let is_put = request.header("x-amz-target").is_some_and(|t| t.ends_with(".PutRecords"));
        let fault = if is_put {
            let mut s = stats.lock().expect("stats");
            let fault = plan(s.put_records_calls);
            s.put_records_calls += 1;
            if fault != Fault::Pass {
                s.faults.push(fault);
            }
            fault
        } else {
            Fault::Pass
        };
        let result = match fault {
            Fault::Pass => forward(&request, &request.body, upstream)
                .and_then(|response| response.write_to(&mut out, &response.body, "keep-alive")),
            Fault::ServerError => answer(
                &mut out,
                "500 Internal Server Error",
                &json!({"__type": "InternalFailure", "message": "injected by the test proxy"}),
            ),
            Fault::Throttle => answer(
                &mut out,
                "400 Bad Request",
                &json!({"__type": "ProvisionedThroughputExceededException", "message": "injected by the test proxy"}),
            ),
            Fault::Reset => {
                reset(&out);
                return;
            }
            Fault::Hang => {
                std::thread::sleep(hang_for);
                return;
            }
            Fault::DropResponse => {
                let records = record_count(&request.body);
                if forward(&request, &request.body, upstream).is_ok() {
                    stats.lock().expect("stats").dropped_response_records += records;
                }
                reset(&out);
                return;
            }
            Fault::Partial => partial(&request, upstream, stats).and_then(|body| answer(&mut out, "200 OK", &body)),
        };
        if result.is_err() {
            return;
        }
    }
}

fn record_count(body: &[u8]) -> u64 {
    serde_json::from_slice::<Value>(body).ok().and_then(|v| Some(v["Records"].as_array()?.len() as u64)).unwrap_or(0)
}

/// Forwards the even-numbered records and answers the others as throttled, as Kinesis does
/// when some shards are over their limit.
fn partial(request: &Message, upstream: u16, stats: &Mutex<Stats>) -> std::io::Result<Value> {
    let mut body: Value = serde_json::from_slice(&request.body).map_err(std::io::Error::other)?;
    let records = body["Records"].as_array().cloned().unwrap_or_default();
    // With one record, it fails: a partial failure must fail something.
    let forwarded: Vec<Value> =
        if records.len() > 1 { records.iter().step_by(2).cloned().collect() } else { Vec::new() };
    let mut accepted = Vec::new();
    if !forwarded.is_empty() {
        body["Records"] = Value::Array(forwarded);
        let response = forward(request, body.to_string().as_bytes(), upstream)?;
        if !response.first.contains(" 200 ") {
            return Err(std::io::Error::other(format!("upstream: {}", response.first)));
        }
        let answer: Value = serde_json::from_slice(&response.body).map_err(std::io::Error::other)?;
        accepted = answer["Records"].as_array().cloned().unwrap_or_default();
    }
    let mut accepted = accepted.into_iter();
    let mut failed = 0;
    let results: Vec<Value> = (0..records.len())
        .map(|i| {
            if i % 2 == 0 && records.len() > 1 {
                accepted.next().unwrap_or(Value::Null)
            } else {
                failed += 1;
                json!({"ErrorCode": "ProvisionedThroughputExceededException", "ErrorMessage": "injected by the test proxy"})
            }
        })
        .collect();
    stats.lock().expect("stats").records_failed += failed;
    Ok(json!({"FailedRecordCount": failed, "Records": results}))
}
