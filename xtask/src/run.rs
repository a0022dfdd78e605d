//! `cargo xtask run`: the collector on a demo log, in one command. A writer appends numbered
//! lines, logrotate rotates the log every few seconds (copytruncate and create in turn, with
//! compress), `collector run` ships to a local Kinesis server (kinesis-mock, started here),
//! and each record is printed as it is read back from the stream; on exit a tally says
//! whether every line arrived exactly once.

use std::{
    fs,
    io::{Read as _, Write as _},
    net::TcpStream,
    os::unix::process::CommandExt as _,
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use crate::{build, setup, shell};

/// Set by Ctrl-C: the demo stops and prints its tally.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_interrupt(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

pub fn run(seconds: Option<u64>) -> anyhow::Result<()> {
    setup::demo()?;
    let collector = build::collector()?;
    let demo = shell::work_dir().join("demo");
    let _ = fs::remove_dir_all(&demo);
    fs::create_dir_all(&demo)?;
    let log = demo.join("app.log");
    fs::write(&log, b"")?;
    let conf = demo.join("logrotate.conf");
    let server = KinesisLocal::start()?;
    let config = demo.join("collector.toml");
    fs::write(
        &config,
        format!(
            "[collector]\nstate_dir = {:?}\n\n[[flow]]\nname = \"demo\"\npaths = [{:?}]\nrotated_idle = \"10s\"\n\n\
             [flow.sink]\nkind = \"kinesis\"\nstream = \"demo\"\nregion = \"us-east-1\"\nendpoint_url = \"http://127.0.0.1:{}\"\n\
             envelope = \"json\"\n",
            demo.join("state"),
            demo.join("app.log*"),
            server.port
        ),
    )?;

    let mut child = Command::new(&collector)
        .arg("run")
        .arg("--config")
        .arg(&config)
        // The local server takes any credentials; these keep the SDK from asking IMDS.
        .env("AWS_ACCESS_KEY_ID", "demo")
        .env("AWS_SECRET_ACCESS_KEY", "demo")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        // Ctrl-C reaches the terminal's process group: the demo stops the collector itself,
        // after the last records are read back.
        .process_group(0)
        .spawn()?;
    eprintln!(
        "demo: collector (pid {}) shipping {}/app.log* to the Kinesis stream `demo` at 127.0.0.1:{}; Ctrl-C to stop",
        child.id(),
        demo.display(),
        server.port
    );
    // From here Ctrl-C stops the demo with its tally (before, it stops setup and the build).
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe { libc::signal(libc::SIGINT, on_interrupt as *const () as libc::sighandler_t) };
    let mut reader = StreamReader::new(server.port)?;
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(std::sync::atomic::AtomicU64::new(0));

    let writer = {
        let (stop, log, written) = (stop.clone(), log.clone(), written.clone());
        thread::spawn(move || {
            let mut line = 0u64;
            while !stop.load(Ordering::Relaxed) {
                // Reopen each time, as an app would after logrotate's create (no SIGHUP here).
                if let Ok(mut f) = fs::OpenOptions::new().append(true).create(true).open(&log) {
                    line += 1;
                    if f.write_all(format!("demo line {line}\n").as_bytes()).is_ok() {
                        written.store(line, Ordering::Relaxed);
                    }
                }
                thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let rotator = {
        let stop = stop.clone();
        thread::spawn(move || {
            let mut round = 0;
            while !stop.load(Ordering::Relaxed) {
                thread::sleep(Duration::from_secs(3));
                round += 1;
                let how = if round % 2 == 0 { "create" } else { "copytruncate" };
                let body = format!("{} {{\n  {how}\n  rotate 3\n  compress\n  delaycompress\n}}\n", log.display());
                if fs::write(&conf, body).is_ok() {
                    eprintln!("demo: logrotate ({how})");
                    let _ = Command::new("logrotate")
                        .arg("-f")
                        .arg("-s")
                        .arg(conf.with_extension("state"))
                        .arg(&conf)
                        .status();
                }
            }
        })
    };

    let started = Instant::now();
    let mut seen = std::collections::BTreeMap::<u64, u32>::new();
    let mut show = |seen: &mut std::collections::BTreeMap<u64, u32>| -> anyhow::Result<()> {
        for r in reader.next_records()? {
            let data = r["data"].as_str().unwrap_or("");
            println!(
                "kinesis: {:<40} ino {:<9} offset {:<6} {data}",
                r["path"].as_str().unwrap_or(""),
                r["ino"],
                r["offset"]
            );
            if let Some(n) = data.strip_prefix("demo line ").and_then(|n| n.parse().ok()) {
                *seen.entry(n).or_default() += 1;
            }
        }
        Ok(())
    };
    loop {
        if let Some(status) = child.try_wait()? {
            stop.store(true, Ordering::Relaxed);
            anyhow::bail!("collector exited: {status}");
        }
        show(&mut seen)?;
        if seconds.is_some_and(|s| started.elapsed() >= Duration::from_secs(s)) || INTERRUPTED.load(Ordering::Relaxed) {
            break;
        }
        thread::sleep(Duration::from_millis(200));
    }
    stop.store(true, Ordering::Relaxed);
    let _ = (writer.join(), rotator.join());
    // A moment to ship the last lines, then a clean stop (checkpoints written).
    thread::sleep(Duration::from_secs(2));
    show(&mut seen)?;
    // SAFETY: kill takes no pointers; the pid is our own child's, not yet waited for.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait()?;
    let total = written.load(Ordering::Relaxed);
    let missing = (1..=total).filter(|n| !seen.contains_key(n)).count();
    let twice = seen.values().filter(|c| **c > 1).count();
    eprintln!("demo: stopped ({status}); {total} lines written, {missing} missing, {twice} shipped more than once");
    Ok(())
}

/// kinesis-mock (npm kinesis-local, installed by setup) on a free port with a stream `demo`.
struct KinesisLocal {
    child: Child,
    port: u16,
}

impl KinesisLocal {
    fn start() -> anyhow::Result<KinesisLocal> {
        let free = || -> anyhow::Result<u16> { Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port()) };
        let port = free()?;
        let main = setup::kinesis_local_main();
        let child = Command::new("node")
            .arg(&main)
            .current_dir(main.parent().expect("package dir"))
            .env("KINESIS_MOCK_PLAIN_PORT", port.to_string())
            .env("KINESIS_MOCK_TLS_PORT", free()?.to_string())
            .env("INITIALIZE_STREAMS", "demo:1")
            .env("CREATE_STREAM_DURATION", "0ms")
            .env("LOG_LEVEL", "WARN")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Not stopped by the terminal's Ctrl-C: the demo reads the last records from it.
            .process_group(0)
            .spawn()?;
        let server = KinesisLocal { child, port };
        let deadline = Instant::now() + Duration::from_secs(60);
        while call(port, "ListShards", &serde_json::json!({"StreamName": "demo"})).is_err() {
            anyhow::ensure!(Instant::now() < deadline, "kinesis-local did not answer on {port}");
            thread::sleep(Duration::from_millis(200));
        }
        Ok(server)
    }
}

impl Drop for KinesisLocal {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads the demo stream's one shard from its start, as a consumer would.
struct StreamReader {
    port: u16,
    iterator: String,
}

impl StreamReader {
    fn new(port: u16) -> anyhow::Result<StreamReader> {
        let out = call(
            port,
            "GetShardIterator",
            &serde_json::json!({"StreamName": "demo", "ShardId": "shardId-000000000000", "ShardIteratorType": "TRIM_HORIZON"}),
        )?;
        let iterator = out["ShardIterator"].as_str().ok_or_else(|| anyhow::anyhow!("no iterator: {out}"))?.to_owned();
        Ok(StreamReader { port, iterator })
    }

    /// The records that arrived since the last call, as the collector's JSON envelopes.
    fn next_records(&mut self) -> anyhow::Result<Vec<serde_json::Value>> {
        let out = call(self.port, "GetRecords", &serde_json::json!({"ShardIterator": self.iterator, "Limit": 10000}))?;
        if let Some(next) = out["NextShardIterator"].as_str() {
            self.iterator = next.to_owned();
        }
        let mut records = Vec::new();
        for r in out["Records"].as_array().into_iter().flatten() {
            let data = collector_tests::acceptor::base64_decode(r["Data"].as_str().unwrap_or(""))
                .ok_or_else(|| anyhow::anyhow!("a record's Data is not base64"))?;
            records.push(serde_json::from_slice(&data)?);
        }
        Ok(records)
    }
}

/// One Kinesis API call over plain HTTP. kinesis-mock checks that a SigV4 header is there,
/// not the signature: this placeholder is for the local demo server only.
fn call(port: u16, action: &str, body: &serde_json::Value) -> anyhow::Result<serde_json::Value> {
    let body = body.to_string();
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "POST / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nX-Amz-Target: Kinesis_20131202.{action}\r\n\
         Content-Type: application/x-amz-json-1.1\r\nX-Amz-Date: 20260101T000000Z\r\n\
         Authorization: AWS4-HMAC-SHA256 Credential=demo/20260101/us-east-1/kinesis/aws4_request, SignedHeaders=host;x-amz-date, Signature=0\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let text = String::from_utf8_lossy(&response);
    let (head, rest) = text.split_once("\r\n\r\n").ok_or_else(|| anyhow::anyhow!("malformed response"))?;
    // The body may come chunked.
    let json = if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        let mut body = String::new();
        let mut rest = rest;
        while let Some((size, after)) = rest.split_once("\r\n") {
            let size = usize::from_str_radix(size.trim(), 16)?;
            if size == 0 {
                break;
            }
            body.push_str(&after[..size]);
            rest = &after[size + 2..];
        }
        body
    } else {
        rest.to_owned()
    };
    anyhow::ensure!(head.starts_with("HTTP/1.1 200"), "{action}: {} {json}", head.lines().next().unwrap_or(""));
    Ok(serde_json::from_str(&json)?)
}
