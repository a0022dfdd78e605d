//! What the collector is doing, over HTTP on `[metrics] listen` (bind it to localhost unless
//! a scraper elsewhere needs it): `/metrics` in Prometheus text, `/health` (200 when running
//! and no flow is stalled, 503 naming the stalled flows), `/live` (200 while the daemon's
//! loop turns: the liveness probe), `/status` (JSON: every tracked
//! file, for `collector status`). The daemon publishes a snapshot every tick; requests only
//! read it, so a slow scraper never slows shipping.

use std::{
    fmt::Write as _,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use serde::Serialize;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// /live fails when the daemon's loop has not published a snapshot for this long. A turn
/// waits at most for its sink calls (each retried for up to 20 s), so a loop that turns
/// takes far less.
pub const STUCK_AFTER: Duration = Duration::from_secs(120);

/// After a failed accept (out of descriptors), the next try waits this long.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// A flow whose sink has refused everything for this long is reported stalled by /health.
pub const STALLED_AFTER: Duration = Duration::from_secs(30);

#[derive(Default, Clone, Copy, Debug)]
pub struct FlowCounters {
    pub bytes_read: u64,
    pub records_sent: u64,
    pub bytes_sent: u64,
    pub batches_failed: u64,
    pub records_retried: u64,
    pub records_cut: u64,
    pub bytes_lost: u64,
    /// Bytes read because the safety sweep found them with no write event announcing them.
    pub bytes_swept: u64,
    /// Bytes of writes a truncation cut before their exit hook ran, recovered from what the
    /// kernel carried of them.
    pub bytes_cut_recovered: u64,
    /// Records a transform could not parse (shipped as read, or dropped: records_dropped).
    pub records_unparsed: u64,
    pub records_dropped: u64,
    /// Files that matched but hold compressed or binary data (rotated `.gz` archives).
    pub files_skipped_binary: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct FileStatus {
    pub path: String,
    pub flow: String,
    pub dev: u64,
    pub ino: u64,
    /// "tracking" (a live log), "rotated" (renamed away or deleted, being drained),
    /// "copy" (a derived copy or archive, never shipped).
    pub state: &'static str,
    pub size: u64,
    pub shipped: u64,
}

#[derive(Clone, Debug)]
pub struct FlowStatus {
    pub name: String,
    pub sink: &'static str,
    pub counters: FlowCounters,
    pub lag_bytes: u64,
    pub files: usize,
    /// Since when its sink refuses batches, and the error.
    pub failing: Option<(Instant, String)>,
}

#[derive(Clone, Debug)]
pub struct Snapshot {
    /// When the daemon's loop published it: a loop that stopped turning is not alive.
    pub published: Instant,
    pub attach_mode: String,
    /// Each hook family and the mechanism it is attached with.
    pub hooks: Vec<(&'static str, &'static str)>,
    /// Events the kernel programs put in the ring (a process's appends folded into one).
    pub kernel_events: u64,
    pub ring_buffer_lost: u64,
    pub flows: Vec<FlowStatus>,
    pub files: Vec<FileStatus>,
    /// Checkpoints that could not be saved so far.
    pub checkpoint_failures: u64,
    /// Since when checkpoints fail, with the directory and cause.
    pub checkpoints_failing: Option<(Instant, String)>,
}

pub type Shared = Arc<Mutex<Option<Snapshot>>>;

/// Binds now (a port in use is a start-up error naming it) and serves in the background.
pub async fn serve(listen: SocketAddr, shared: Shared) -> anyhow::Result<()> {
    let listener =
        tokio::net::TcpListener::bind(listen).await.with_context(|| format!("metrics: cannot listen on {listen}"))?;
    tracing::info!(%listen, "metrics, health and status served");
    tokio::spawn(async move {
        let mut said = None;
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of descriptors (EMFILE): the connection waits in the backlog and
                    // accept fails again at once; without a pause this loop would spin.
                    if said != Some(e.kind()) {
                        tracing::warn!("metrics: cannot accept a connection: {e} (trying again every 100 ms)");
                        said = Some(e.kind());
                    }
                    tokio::time::sleep(ACCEPT_RETRY).await;
                    continue;
                }
            };
            let shared = shared.clone();
            tokio::spawn(async move {
                let _ = answer(stream, &shared).await;
            });
        }
    });
    Ok(())
}

async fn answer(mut stream: tokio::net::TcpStream, shared: &Shared) -> std::io::Result<()> {
    let mut request = Vec::new();
    let mut buf = [0u8; 1024];
    // The request line and headers; no request this endpoint takes has a body.
    while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 16 * 1024 {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await??;
        if n == 0 {
            break;
        }
        request.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&request);
    let path = line.split_whitespace().nth(1).unwrap_or("/");
    let snapshot = shared.lock().expect("metrics snapshot").clone();
    let (status, kind, body) = respond(path, snapshot);
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

/// Status line, content type and body for a request of `path`.
fn respond(path: &str, snapshot: Option<Snapshot>) -> (&'static str, &'static str, String) {
    match (path, snapshot) {
        (_, None) => ("503 Service Unavailable", "text/plain", "starting\n".to_owned()),
        ("/metrics", Some(s)) => ("200 OK", "text/plain; version=0.0.4", render_metrics(&s)),
        ("/health", Some(s)) => match stalled(&s) {
            stalled if stalled.is_empty() => ("200 OK", "text/plain", "ok\n".to_owned()),
            stalled => ("503 Service Unavailable", "text/plain", format!("stalled: {}\n", stalled.join("; "))),
        },
        ("/live", Some(s)) if s.published.elapsed() < STUCK_AFTER => ("200 OK", "text/plain", "alive\n".to_owned()),
        ("/live", Some(s)) => (
            "503 Service Unavailable",
            "text/plain",
            format!("the daemon's loop has not turned for {:.0?}\n", s.published.elapsed()),
        ),
        ("/status", Some(s)) => ("200 OK", "application/json", status_json(&s).to_string()),
        _ => ("404 Not Found", "text/plain", "try /metrics, /health, /live or /status\n".to_owned()),
    }
}

/// `/status`: the attach mode, each flow (its sink, whether it is failing, since when and
/// why, its lag and counts), and every tracked file.
fn status_json(s: &Snapshot) -> serde_json::Value {
    let flows: Vec<serde_json::Value> = s
        .flows
        .iter()
        .map(|f| {
            serde_json::json!({
                "name": f.name,
                "sink": f.sink,
                "state": if f.failing.is_some() { "failing" } else { "ok" },
                "failing_seconds": f.failing.as_ref().map(|(since, _)| since.elapsed().as_secs()),
                "last_error": f.failing.as_ref().map(|(_, error)| error),
                "lag_bytes": f.lag_bytes,
                "files": f.files,
                "sent_records": f.counters.records_sent,
                "sent_bytes": f.counters.bytes_sent,
                "lost_bytes": f.counters.bytes_lost,
            })
        })
        .collect();
    let hooks: serde_json::Map<String, serde_json::Value> =
        s.hooks.iter().map(|(hook, mode)| ((*hook).to_owned(), (*mode).into())).collect();
    serde_json::json!({ "attach_mode": s.attach_mode, "hooks": hooks, "flows": flows, "files": s.files })
}

/// Flows whose sink has refused batches for STALLED_AFTER, with their error, and failing
/// checkpoints (a restart would send again what was shipped since).
fn stalled(s: &Snapshot) -> Vec<String> {
    let flows = s.flows.iter().filter_map(|f| {
        let (since, error) = f.failing.as_ref()?;
        (since.elapsed() >= STALLED_AFTER).then(|| format!("flow {} for {:.0?}: {error}", f.name, since.elapsed()))
    });
    let checkpoints = s
        .checkpoints_failing
        .as_ref()
        .map(|(since, error)| format!("checkpoints not saved for {:.0?}: {error}", since.elapsed()));
    flows.chain(checkpoints).collect()
}

fn render_metrics(s: &Snapshot) -> String {
    let mut out = String::new();
    let mut family = |name: &str, kind: &str, help: &str, value: &dyn Fn(&FlowStatus) -> u64| {
        let _ = writeln!(out, "# HELP collector_{name} {help}\n# TYPE collector_{name} {kind}");
        for f in &s.flows {
            let _ = writeln!(out, "collector_{name}{{flow=\"{}\",sink=\"{}\"}} {}", escape(&f.name), f.sink, value(f));
        }
    };
    family("read_bytes_total", "counter", "Bytes read from log files.", &|f| f.counters.bytes_read);
    family("sent_records_total", "counter", "Records the sink accepted.", &|f| f.counters.records_sent);
    family("sent_bytes_total", "counter", "Record bytes the sink accepted.", &|f| f.counters.bytes_sent);
    family("retried_records_total", "counter", "Records sent again after a partial failure.", &|f| {
        f.counters.records_retried
    });
    family("failed_batches_total", "counter", "Batches the sink refused (the bytes are read again).", &|f| {
        f.counters.batches_failed
    });
    family("cut_records_total", "counter", "Records cut to the record size limit.", &|f| f.counters.records_cut);
    family("unparsed_records_total", "counter", "Records a transform could not parse.", &|f| {
        f.counters.records_unparsed
    });
    family("dropped_records_total", "counter", "Unparsed records dropped (on_parse_error = \"drop\").", &|f| {
        f.counters.records_dropped
    });
    family("lost_bytes_total", "counter", "Bytes truncated away before they could be read.", &|f| {
        f.counters.bytes_lost
    });
    family(
        "swept_bytes_total",
        "counter",
        "Bytes read because the periodic sweep found them unannounced by any write event (writes the kernel hooks do not see, io_uring for one).",
        &|f| f.counters.bytes_swept,
    );
    family(
        "cut_write_recovered_bytes_total",
        "counter",
        "Bytes of writes a truncation cut before the write returned, recovered from the kernel's copy of them.",
        &|f| f.counters.bytes_cut_recovered,
    );
    family(
        "skipped_binary_files_total",
        "counter",
        "Files that match a pattern but start as compressed or binary data (archives, executables): not shipped.",
        &|f| f.counters.files_skipped_binary,
    );
    family("lag_bytes", "gauge", "Bytes written to the flow's files and not yet accepted by its sink.", &|f| {
        f.lag_bytes
    });
    family("tracked_files", "gauge", "Files the flow holds open.", &|f| f.files as u64);
    family("sink_failing", "gauge", "1 while the sink refuses batches.", &|f| u64::from(f.failing.is_some()));
    let _ = writeln!(
        out,
        "# HELP collector_checkpoint_failures_total Checkpoints that could not be saved (state directory full, \
         read-only or gone): until one is, a restart sends again what was shipped since.\n\
         # TYPE collector_checkpoint_failures_total counter\ncollector_checkpoint_failures_total {}\n\
         # HELP collector_checkpoints_failing 1 while checkpoints cannot be saved.\n\
         # TYPE collector_checkpoints_failing gauge\ncollector_checkpoints_failing {}",
        s.checkpoint_failures,
        u64::from(s.checkpoints_failing.is_some())
    );
    let _ = writeln!(
        out,
        "# HELP collector_kernel_events_total Events the kernel programs reported (appends of one process to a file \
         made while its last event was unread are folded into that event).\n\
         # TYPE collector_kernel_events_total counter\ncollector_kernel_events_total {}",
        s.kernel_events
    );
    let _ = writeln!(
        out,
        "# HELP collector_ring_buffer_lost_events_total Kernel events dropped because the ring buffer was full.\n\
         # TYPE collector_ring_buffer_lost_events_total counter\ncollector_ring_buffer_lost_events_total {}",
        s.ring_buffer_lost
    );
    let _ = writeln!(
        out,
        "# HELP collector_attach_mode How the kernel programs are attached.\n# TYPE collector_attach_mode gauge\n\
         collector_attach_mode{{mode=\"{}\"}} 1",
        s.attach_mode
    );
    let _ = writeln!(
        out,
        "# HELP collector_hook_attach_mode How each family of kernel hooks is attached.\n\
         # TYPE collector_hook_attach_mode gauge"
    );
    for (hook, mode) in &s.hooks {
        let _ = writeln!(out, "collector_hook_attach_mode{{hook=\"{hook}\",mode=\"{mode}\"}} 1");
    }
    let _ = writeln!(
        out,
        "# HELP collector_build_info The collector's version.\n# TYPE collector_build_info gauge\n\
         collector_build_info{{version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    );
    render_process(&mut out, &Process::read());
    out
}

/// The process as the kernel accounts it, read when /metrics is asked for.
struct Process {
    open_fds: Option<u64>,
    max_fds: Option<u64>,
    resident_bytes: Option<u64>,
}

impl Process {
    fn read() -> Process {
        let open_fds = std::fs::read_dir("/proc/self/fd").ok().map(|d| d.count() as u64);
        let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: getrlimit fills the local `limit` and reads no other memory.
        let max_fds = (unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0).then_some(limit.rlim_cur);
        // statm's second field: resident pages.
        let resident_pages = std::fs::read_to_string("/proc/self/statm")
            .ok()
            .and_then(|statm| statm.split_whitespace().nth(1)?.parse::<u64>().ok());
        // SAFETY: sysconf takes no pointers.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64;
        Process { open_fds, max_fds, resident_bytes: resident_pages.map(|p| p * page) }
    }
}

/// Prometheus' standard process gauges (what its client libraries export by these names).
fn render_process(out: &mut String, p: &Process) {
    let gauges = [
        ("process_open_fds", "Open file descriptors.", p.open_fds),
        ("process_max_fds", "The soft limit on open file descriptors.", p.max_fds),
        ("process_resident_memory_bytes", "Resident memory in bytes.", p.resident_bytes),
    ];
    for (name, help, value) in gauges {
        if let Some(value) = value {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}");
        }
    }
}

fn escape(label: &str) -> String {
    label.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot() -> Snapshot {
        Snapshot {
            published: Instant::now(),
            attach_mode: "fentry".into(),
            hooks: vec![("write", "fentry"), ("copy", "kprobe")],
            kernel_events: 12,
            ring_buffer_lost: 3,
            flows: vec![FlowStatus {
                name: "a\"b".into(),
                sink: "kinesis",
                counters: FlowCounters { bytes_read: 10, records_sent: 2, ..Default::default() },
                lag_bytes: 7,
                files: 1,
                failing: None,
            }],
            files: Vec::new(),
            checkpoint_failures: 0,
            checkpoints_failing: None,
        }
    }

    #[test]
    fn metrics_are_prometheus_text_with_escaped_labels() {
        let text = render_metrics(&snapshot());
        assert!(text.contains("collector_sent_records_total{flow=\"a\\\"b\",sink=\"kinesis\"} 2\n"), "{text}");
        assert!(text.contains("collector_lag_bytes{flow=\"a\\\"b\",sink=\"kinesis\"} 7\n"));
        assert!(text.contains("collector_ring_buffer_lost_events_total 3\n"));
        assert!(text.contains("collector_kernel_events_total 12\n"));
        assert!(text.contains("collector_attach_mode{mode=\"fentry\"} 1\n"));
        assert!(text.contains("collector_hook_attach_mode{hook=\"copy\",mode=\"kprobe\"} 1\n"), "{text}");
        assert!(text.contains(&format!("collector_build_info{{version=\"{}\"}} 1\n", env!("CARGO_PKG_VERSION"))));
    }

    #[test]
    fn process_gauges_are_this_process() {
        let p = Process::read();
        assert!(p.open_fds.is_some_and(|n| n >= 3), "{:?}", p.open_fds);
        assert!(p.resident_bytes.is_some_and(|n| n > 1 << 20), "{:?}", p.resident_bytes);
        let mut out = String::new();
        render_process(&mut out, &Process { open_fds: Some(7), max_fds: None, resident_bytes: Some(4096) });
        assert!(
            out.contains("\nprocess_open_fds 7\n") && out.contains("\nprocess_resident_memory_bytes 4096\n"),
            "{out}"
        );
        assert!(!out.contains("process_max_fds"), "an unknown value is left out: {out}");
    }

    #[test]
    fn status_lists_each_flow_with_its_state_and_error() {
        let mut s = snapshot();
        s.flows[0].failing = Some((Instant::now() - Duration::from_secs(40), "AccessDenied: no".into()));
        let (status, kind, body) = respond("/status", Some(s));
        assert_eq!((status, kind), ("200 OK", "application/json"));
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let flow = &v["flows"][0];
        assert_eq!((flow["name"].as_str(), flow["sink"].as_str()), (Some("a\"b"), Some("kinesis")));
        assert_eq!((flow["state"].as_str(), flow["last_error"].as_str()), (Some("failing"), Some("AccessDenied: no")));
        assert!(flow["failing_seconds"].as_u64().is_some_and(|s| s >= 40), "{flow}");
        assert_eq!((flow["lag_bytes"].as_u64(), flow["sent_records"].as_u64()), (Some(7), Some(2)));
        assert_eq!(v["files"], serde_json::json!([]));
        assert_eq!(v["attach_mode"], "fentry");
        assert_eq!(v["hooks"]["copy"], "kprobe");
    }

    #[test]
    fn a_flow_failing_long_enough_is_stalled() {
        let mut s = snapshot();
        assert!(stalled(&s).is_empty());
        s.flows[0].failing = Some((Instant::now(), "AccessDenied".into()));
        assert!(stalled(&s).is_empty(), "not yet");
        s.flows[0].failing = Some((Instant::now() - STALLED_AFTER, "AccessDenied".into()));
        assert!(stalled(&s)[0].contains("AccessDenied"));
    }

    #[test]
    fn live_while_the_loop_turns() {
        let mut s = snapshot();
        assert_eq!(respond("/live", Some(s.clone())).0, "200 OK");
        s.published = Instant::now() - STUCK_AFTER;
        let (status, _, body) = respond("/live", Some(s));
        assert!(status.starts_with("503") && body.contains("has not turned"), "{status} {body}");
        // A sink that refuses everything is not a reason to restart the process.
        let mut s = snapshot();
        s.flows[0].failing = Some((Instant::now() - STALLED_AFTER, "AccessDenied".into()));
        assert_eq!(respond("/live", Some(s.clone())).0, "200 OK");
        assert!(respond("/health", Some(s)).0.starts_with("503"));
    }

    #[test]
    fn failing_checkpoints_show_in_health_and_metrics() {
        let mut s = snapshot();
        s.checkpoint_failures = 4;
        s.checkpoints_failing =
            Some((Instant::now(), "/var/lib/collector/checkpoints: No space left on device".into()));
        let stalled = stalled(&s);
        assert!(stalled[0].contains("checkpoints not saved") && stalled[0].contains("No space left"), "{stalled:?}");
        let text = render_metrics(&s);
        assert!(text.contains("collector_checkpoint_failures_total 4\n"), "{text}");
        assert!(text.contains("collector_checkpoints_failing 1\n"), "{text}");
    }
}
