//! A minimal PutRecords endpoint on 127.0.0.1: it answers every record as accepted and
//! hands each record's data to a callback. For what kinesis-mock (~750 records/s) and moto
//! (~10k/s) are too slow for: the benchmarks, and tests that ship hundreds of thousands of
//! lines. It is not Kinesis: the tests that check Kinesis itself use kinesis-mock.
//!
//! It can stall: while set, requests are read and never answered (a hung endpoint), and
//! their connection is closed when it is cleared. It can answer each PutRecords after a
//! delay, as a regional endpoint 20 ms away does (each connection waits on its own). It can
//! throttle one shard: records whose data starts with a set prefix are refused as Kinesis
//! refuses records over a shard's limits (ProvisionedThroughputExceededException), the
//! rest of the same call accepted.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

/// Called with each accepted record's data, in the order the calls come.
pub type OnRecord = Box<dyn Fn(&[u8]) + Send + Sync>;

struct State {
    records: AtomicU64,
    bytes: AtomicU64,
    calls: AtomicU64,
    stall: AtomicBool,
    delay_us: AtomicU64,
    throttled: std::sync::Mutex<Option<Vec<u8>>>,
    on_record: OnRecord,
}

pub struct Acceptor {
    pub port: u16,
    state: Arc<State>,
}

impl Acceptor {
    /// Listens on a free port of 127.0.0.1, each connection served on its own thread.
    pub fn start(on_record: OnRecord) -> std::io::Result<Acceptor> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let state = Arc::new(State {
            records: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            calls: AtomicU64::new(0),
            stall: AtomicBool::new(false),
            delay_us: AtomicU64::new(0),
            throttled: std::sync::Mutex::new(None),
            on_record,
        });
        let shared = state.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let state = shared.clone();
                std::thread::spawn(move || {
                    let _ = serve(stream, &state);
                });
            }
        });
        Ok(Acceptor { port, state })
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Records accepted so far.
    pub fn records(&self) -> u64 {
        self.state.records.load(Ordering::Relaxed)
    }

    /// PutRecords calls answered since the last time this was asked.
    pub fn take_calls(&self) -> u64 {
        self.state.calls.swap(0, Ordering::Relaxed)
    }

    /// Each PutRecords is answered this long after it was read.
    pub fn set_delay(&self, delay: Duration) {
        self.state.delay_us.store(delay.as_micros() as u64, Ordering::Relaxed);
    }

    /// Records whose data starts with `prefix` are refused as throttled (None: none are).
    pub fn set_throttled(&self, prefix: Option<&[u8]>) {
        *self.state.throttled.lock().expect("throttled") = prefix.map(<[u8]>::to_vec);
    }

    pub fn set_stalled(&self, stalled: bool) {
        self.state.stall.store(stalled, Ordering::Relaxed);
    }
}

fn serve(stream: TcpStream, state: &State) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let mut out = stream.try_clone()?;
    let mut input = BufReader::new(stream);
    loop {
        let mut target = String::new();
        let mut length = 0usize;
        let mut line = String::new();
        if input.read_line(&mut line)? == 0 {
            return Ok(());
        }
        loop {
            line.clear();
            input.read_line(&mut line)?;
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                match k.trim().to_ascii_lowercase().as_str() {
                    "content-length" => length = v.trim().parse().map_err(std::io::Error::other)?,
                    "x-amz-target" => target = v.trim().to_owned(),
                    _ => {}
                }
            }
        }
        let mut body = vec![0; length];
        input.read_exact(&mut body)?;
        if state.stall.load(Ordering::Relaxed) {
            while state.stall.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(20));
            }
            return Ok(());
        }
        let response = if target.ends_with(".PutRecords") {
            let delay = state.delay_us.load(Ordering::Relaxed);
            if delay > 0 {
                std::thread::sleep(Duration::from_micros(delay));
            }
            put_records(&body, state)?
        } else if target.ends_with(".DescribeStreamSummary") {
            let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
            format!(
                "{{\"StreamDescriptionSummary\":{{\"StreamName\":\"bench\",\"StreamARN\":\"arn:aws:kinesis:us-east-1:123456789012:stream/bench\",\
                 \"StreamStatus\":\"ACTIVE\",\"RetentionPeriodHours\":24,\"StreamCreationTimestamp\":{now},\
                 \"EnhancedMonitoring\":[{{\"ShardLevelMetrics\":[]}}],\"OpenShardCount\":1}}}}"
            )
        } else {
            return Err(std::io::Error::other(format!("unexpected call {target}")));
        };
        // One write: a response split over two segments meets the client's delayed ACK (40 ms).
        let message = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/x-amz-json-1.1\r\nContent-Length: {}\r\n\r\n{response}",
            response.len()
        );
        out.write_all(message.as_bytes())?;
    }
}

fn put_records(body: &[u8], state: &State) -> std::io::Result<String> {
    let request: serde_json::Value = serde_json::from_slice(body).map_err(std::io::Error::other)?;
    let records = request["Records"].as_array().ok_or_else(|| std::io::Error::other("no Records"))?;
    let throttled = state.throttled.lock().expect("throttled").clone();
    let (mut bytes, mut taken) = (0, 0);
    let mut answers = Vec::with_capacity(records.len());
    for r in records {
        let data = base64_decode(r["Data"].as_str().unwrap_or("")).ok_or_else(|| std::io::Error::other("Data"))?;
        if throttled.as_ref().is_some_and(|p| data.starts_with(p)) {
            answers.push(
                "{\"ErrorCode\":\"ProvisionedThroughputExceededException\",\"ErrorMessage\":\"Rate exceeded for shard shardId-000000000001\"}",
            );
            continue;
        }
        bytes += data.len() as u64;
        taken += 1;
        (state.on_record)(&data);
        answers.push("{\"SequenceNumber\":\"1\",\"ShardId\":\"shardId-000000000000\"}");
    }
    state.records.fetch_add(taken, Ordering::Relaxed);
    state.bytes.fetch_add(bytes, Ordering::Relaxed);
    state.calls.fetch_add(1, Ordering::Relaxed);
    let failed = records.len() as u64 - taken;
    Ok(format!("{{\"FailedRecordCount\":{failed},\"Records\":[{}]}}", answers.join(",")))
}

/// Standard base64 (with or without padding); None for anything else.
pub fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let value = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let text = text.trim_end_matches('=').as_bytes();
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    for chunk in text.chunks(4) {
        let mut n = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            n |= value(*c)? << (18 - 6 * i);
        }
        out.extend_from_slice(&n.to_be_bytes()[1..chunk.len()]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_round_trips() {
        assert_eq!(super::base64_decode("aGVsbG8gd29ybGQ=").unwrap(), b"hello world");
        assert_eq!(super::base64_decode("YQ==").unwrap(), b"a");
        assert_eq!(super::base64_decode("YWI=").unwrap(), b"ab");
        assert_eq!(super::base64_decode("YWJj").unwrap(), b"abc");
        assert!(super::base64_decode("a*").is_none());
    }
}
