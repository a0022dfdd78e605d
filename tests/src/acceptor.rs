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
//!
//! KPL aggregated records are unpacked (not checked: the tests that check the format use
//! AWS's own deaggregator): the callback and `records` see the records inside them, and
//! `kinesis_records` and `payload_units` count what Kinesis would bill.

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
    kinesis_records: AtomicU64,
    payload_units: AtomicU64,
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
            kinesis_records: AtomicU64::new(0),
            payload_units: AtomicU64::new(0),
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

    /// Kinesis records accepted so far (an aggregated record counts once).
    pub fn kinesis_records(&self) -> u64 {
        self.state.kinesis_records.load(Ordering::Relaxed)
    }

    /// PUT payload units of the records accepted so far: each record's data and partition
    /// key, in 25 KB steps.
    pub fn payload_units(&self) -> u64 {
        self.state.payload_units.load(Ordering::Relaxed)
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
    let (mut bytes, mut taken, mut kinesis_records, mut units) = (0, 0, 0, 0);
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
        kinesis_records += 1;
        units += (data.len() + r["PartitionKey"].as_str().map_or(0, str::len)).div_ceil(PAYLOAD_UNIT) as u64;
        match kpl_records(&data) {
            Some(inner) => {
                for record in inner {
                    (state.on_record)(record);
                    taken += 1;
                }
            }
            None => {
                (state.on_record)(&data);
                taken += 1;
            }
        }
        answers.push("{\"SequenceNumber\":\"1\",\"ShardId\":\"shardId-000000000000\"}");
    }
    state.records.fetch_add(taken, Ordering::Relaxed);
    state.kinesis_records.fetch_add(kinesis_records, Ordering::Relaxed);
    state.payload_units.fetch_add(units, Ordering::Relaxed);
    state.bytes.fetch_add(bytes, Ordering::Relaxed);
    state.calls.fetch_add(1, Ordering::Relaxed);
    let failed = records.len() as u64 - kinesis_records;
    Ok(format!("{{\"FailedRecordCount\":{failed},\"Records\":[{}]}}", answers.join(",")))
}

/// Kinesis bills PUT payload units of 25 KB.
const PAYLOAD_UNIT: usize = 25_000;

/// The records inside a KPL aggregated record (magic F3 89 9A C2, a protobuf
/// AggregatedRecord whose field 3 holds Records, each with its data in field 3, then a
/// 16-byte MD5); None when `data` is not one.
fn kpl_records(data: &[u8]) -> Option<Vec<&[u8]>> {
    let message = data.strip_prefix(&[0xF3, 0x89, 0x9A, 0xC2])?;
    let message = message.get(..message.len().checked_sub(16)?)?;
    let mut records = Vec::new();
    for (field, value) in protobuf_fields(message)? {
        if field == 3 {
            let record = protobuf_fields(value?)?;
            records.push(record.into_iter().find(|(f, _)| *f == 3)?.1?);
        }
    }
    Some(records)
}

/// A protobuf field: its number, and the bytes of a length-delimited value (None for a varint).
type Field<'a> = (u64, Option<&'a [u8]>);

/// A protobuf message's fields; None when it does not parse.
fn protobuf_fields(mut bytes: &[u8]) -> Option<Vec<Field<'_>>> {
    fn varint(bytes: &mut &[u8]) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let (&b, rest) = bytes.split_first()?;
            *bytes = rest;
            v |= u64::from(b & 0x7f) << shift;
            if b < 0x80 {
                return Some(v);
            }
        }
        None
    }
    let mut fields = Vec::new();
    while !bytes.is_empty() {
        let key = varint(&mut bytes)?;
        match key & 7 {
            0 => {
                varint(&mut bytes)?;
                fields.push((key >> 3, None));
            }
            2 => {
                let len = usize::try_from(varint(&mut bytes)?).ok()?;
                let (value, rest) = bytes.split_at_checked(len)?;
                bytes = rest;
                fields.push((key >> 3, Some(value)));
            }
            _ => return None,
        }
    }
    Some(fields)
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

    #[test]
    fn kpl_records_are_unpacked_and_anything_else_is_not() {
        let protobuf = [0x0A, 1, b'k', 0x1A, 6, 0x08, 0, 0x1A, 2, b'a', b'b', 0x1A, 4, 0x08, 0, 0x1A, 0];
        let data = [&[0xF3, 0x89, 0x9A, 0xC2][..], &protobuf, &[0; 16]].concat();
        assert_eq!(super::kpl_records(&data).unwrap(), vec![&b"ab"[..], &b""[..]]);
        assert!(super::kpl_records(b"plain line").is_none());
        assert!(super::kpl_records(&data[..10]).is_none());
    }
}
