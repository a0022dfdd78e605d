//! What an operator sees: /metrics, /health, /live and /status on the `[metrics] listen` address,
//! read with curl (a real HTTP client), and `collector status`.

use std::{path::Path, process::Command, time::Duration};

use collector_tests::{Running, Scratch, collector_bin, config, curl, sample, wait_for_metric, wait_for_records};

#[test]
fn metrics_health_and_status_show_what_was_shipped() {
    let scratch = Scratch::new("metrics");
    let log = scratch.path("app.log");
    let out = scratch.path("out.jsonl");
    std::fs::write(&log, b"").unwrap();
    let (text, port) =
        collector_tests::with_metrics(&config(&scratch.path("state"), &[scratch.pattern("app.log")], &out, ""));
    let config_path = scratch.path("collector.toml");
    std::fs::write(&config_path, text).unwrap();
    let collector = Running::start_with(&config_path);
    assert!(collector.log_lines(Duration::ZERO).iter().any(|l| l.contains("metrics, health and status served")));
    let base = format!("http://127.0.0.1:{port}");
    let mut lines = String::new();
    for n in 1..=100 {
        lines.push_str(&format!("w {n}\n"));
    }
    std::fs::write(&log, &lines).unwrap();
    assert_eq!(wait_for_records(&out, 100).len(), 100);

    let labels = "{flow=\"app\",sink=\"file\"}";
    let metrics = wait_for_metric(&base, &format!("collector_sent_records_total{labels}"), 100);
    assert_eq!(sample(&metrics, &format!("collector_sent_records_total{labels}")), Some(100), "{metrics}");
    assert_eq!(sample(&metrics, &format!("collector_read_bytes_total{labels}")), Some(lines.len() as u64));
    assert_eq!(sample(&metrics, &format!("collector_lag_bytes{labels}")), Some(0));
    assert_eq!(sample(&metrics, &format!("collector_tracked_files{labels}")), Some(1));
    assert_eq!(sample(&metrics, &format!("collector_sink_failing{labels}")), Some(0));
    assert!(metrics.contains("collector_attach_mode{mode=\""), "{metrics}");
    assert!(metrics.contains(&format!("collector_build_info{{version=\"{}\"}} 1", env!("CARGO_PKG_VERSION"))));
    let rss = metrics.lines().find_map(|l| l.strip_prefix("process_resident_memory_bytes ")?.parse::<u64>().ok());
    let fds = metrics.lines().find_map(|l| l.strip_prefix("process_open_fds ")?.parse::<u64>().ok());
    assert!(rss.is_some_and(|b| b > 1 << 20) && fds.is_some_and(|n| n > 3), "{metrics}");

    assert_eq!(curl(&format!("{base}/health")), (200, "ok\n".to_owned()));
    assert_eq!(curl(&format!("{base}/live")), (200, "alive\n".to_owned()));
    assert_eq!(curl(&format!("{base}/nothing")).0, 404);

    let status = Command::new(collector_bin()).args(["status", "--config"]).arg(&config_path).output().unwrap();
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
    let table = String::from_utf8(status.stdout).unwrap();
    assert_eq!(table.lines().next(), Some("flow app -> file: ok, lag 0 B, 1 files"), "{table}");
    let row: Vec<&str> =
        table.lines().find(|l| l.starts_with(log.to_str().unwrap())).expect(&table).split_whitespace().collect();
    let size = format!("{} B", lines.len());
    assert_eq!(row[2..].join(" "), format!("tracking app {size} {size} 0 B"), "{table}");
    // --addr asks without reading a config (this one does not exist); --json gives the numbers.
    let json = Command::new(collector_bin())
        .args(["status", "--config", "/nonexistent.toml", "--json", "--addr", &format!("127.0.0.1:{port}")])
        .output()
        .unwrap();
    assert!(json.status.success(), "{}", String::from_utf8_lossy(&json.stderr));
    let status: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(status["flows"][0]["name"], "app");
    assert_eq!(status["flows"][0]["state"], "ok");
    assert_eq!(status["flows"][0]["sent_records"], 100);
    let file = &status["files"].as_array().unwrap()[0];
    assert_eq!((file["size"].as_u64(), file["shipped"].as_u64()), (Some(lines.len() as u64), Some(lines.len() as u64)));
}

#[test]
fn status_without_a_metrics_address_says_why() {
    let scratch = Scratch::new("status-no-metrics");
    let path = scratch.path("collector.toml");
    std::fs::write(&path, config(&scratch.path("state"), &[scratch.pattern("*.log")], Path::new("/tmp/x"), ""))
        .unwrap();
    let out = Command::new(collector_bin()).args(["status", "--config"]).arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(78), "a config without the address is a config error");
    assert!(String::from_utf8_lossy(&out.stderr).contains("no [metrics] listen address"));
}

#[test]
fn json_logs_are_one_object_per_line_with_level_and_message() {
    use std::io::BufRead as _;
    let scratch = Scratch::new("jsonlogs");
    let log = scratch.path("app.log");
    std::fs::write(&log, b"").unwrap();
    let path = scratch.path("collector.toml");
    std::fs::write(&path, config(&scratch.path("state"), &[log.display().to_string()], &scratch.path("out.jsonl"), ""))
        .unwrap();
    let mut child = Command::new(collector_bin())
        .args(["--attach-mode", &collector_tests::attach_mode(), "--log-format", "json", "run", "--config"])
        .arg(&path)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        let running = line.contains("collector running");
        seen.push(line);
        if running {
            break;
        }
    }
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    seen.extend(lines.map_while(Result::ok));
    assert!(child.wait().unwrap().success());
    for line in &seen {
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v["timestamp"].is_string() && v["level"].is_string() && v["message"].is_string(), "{line}");
    }
    let running = seen
        .iter()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|v| v["message"] == "collector running");
    let running = running.expect("the start-up line");
    assert_eq!(
        (running["level"].as_str(), running["files"].as_u64()),
        (Some("INFO"), Some(1)),
        "fields are top-level keys"
    );
    assert!(seen.iter().any(|l| l.contains("collector stopped")));
}
