//! `collector status`: the running collector's flows and tracked files, from its /status
//! endpoint (the address is the config's `[metrics] listen`, or `--addr`).

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::Path,
    time::Duration,
};

use anyhow::{Context as _, bail};
use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("the config has no [metrics] listen address: status asks the running collector there")]
    NoAddress,
    #[error(transparent)]
    Asking(#[from] anyhow::Error),
}

/// Where to ask: `addr`, else the config's `[metrics] listen`. `json`: the answer as served.
pub fn print(config: &Path, addr: Option<SocketAddr>, json: bool) -> Result<(), Error> {
    let listen = match addr {
        Some(addr) => addr,
        None => crate::config::Config::load(config)?.metrics_listen.ok_or(Error::NoAddress)?,
    };
    let status = fetch(listen).with_context(|| format!("asking the collector at {listen} (is it running?)"))?;
    if json {
        println!("{status}");
        return Ok(());
    }
    // A collector from before flows were listed answers with the files alone.
    let (flows, files) = match &status {
        Value::Array(files) => (&[][..], files.as_slice()),
        _ => (
            status["flows"].as_array().map_or(&[][..], Vec::as_slice),
            status["files"].as_array().map_or(&[][..], Vec::as_slice),
        ),
    };
    for flow in flows {
        println!("{}", flow_line(flow));
    }
    if !flows.is_empty() {
        println!();
    }
    println!("{}", table(files));
    Ok(())
}

/// `flow app -> kinesis: ok, lag 1.2 MiB, 3 files` (and, failing, for how long and why).
fn flow_line(f: &Value) -> String {
    let mut line = format!(
        "flow {} -> {}: {}, lag {}, {} files",
        f["name"].as_str().unwrap_or("?"),
        f["sink"].as_str().unwrap_or("?"),
        f["state"].as_str().unwrap_or("?"),
        human_bytes(f["lag_bytes"].as_u64().unwrap_or(0)),
        f["files"].as_u64().unwrap_or(0),
    );
    if let Some(seconds) = f["failing_seconds"].as_u64() {
        line.push_str(&format!(" (failing for {seconds} s: {})", f["last_error"].as_str().unwrap_or("?")));
    }
    line
}

/// 1023 B, 1.5 KiB, 12.0 MiB, ...
fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

fn fetch(listen: SocketAddr) -> anyhow::Result<Value> {
    let mut stream = TcpStream::connect_timeout(&listen, Duration::from_secs(3))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(stream, "GET /status HTTP/1.1\r\nHost: {listen}\r\nConnection: close\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response.split_once("\r\n\r\n").context("a malformed HTTP response")?;
    if !head.starts_with("HTTP/1.1 200") {
        bail!("{}", head.lines().next().unwrap_or(head));
    }
    Ok(serde_json::from_str(body)?)
}

fn table(files: &[Value]) -> String {
    let mut rows = vec![["PATH", "INODE", "STATE", "FLOW", "SIZE", "SHIPPED", "LAG"].map(String::from).to_vec()];
    for f in files {
        let (size, shipped) = (f["size"].as_u64().unwrap_or(0), f["shipped"].as_u64().unwrap_or(0));
        let state = f["state"].as_str().unwrap_or("?");
        rows.push(vec![
            f["path"].as_str().unwrap_or("?").to_owned(),
            format!("{}:{}", f["dev"], f["ino"]),
            state.to_owned(),
            f["flow"].as_str().unwrap_or("").to_owned(),
            human_bytes(size),
            if state == "copy" { "-".into() } else { human_bytes(shipped) },
            if state == "copy" { "-".into() } else { human_bytes(size.saturating_sub(shipped)) },
        ]);
    }
    let widths: Vec<usize> = (0..7).map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0)).collect();
    rows.iter()
        .map(|r| {
            r.iter()
                .zip(&widths)
                .map(|(cell, w)| format!("{cell:<w$}"))
                .collect::<Vec<_>>()
                .join("  ")
                .trim_end()
                .to_owned()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_table_shows_lag_and_hides_it_for_copies() {
        let files: Vec<serde_json::Value> = serde_json::from_str(
            r#"[{"path":"/l/app.log","flow":"app","dev":2049,"ino":12,"state":"tracking","size":100,"shipped":60},
                {"path":"/l/app.log.1","flow":"","dev":2049,"ino":13,"state":"copy","size":50,"shipped":0}]"#,
        )
        .unwrap();
        let t = super::table(&files);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(
            lines[0].split_whitespace().collect::<Vec<_>>(),
            ["PATH", "INODE", "STATE", "FLOW", "SIZE", "SHIPPED", "LAG"]
        );
        assert_eq!(
            lines[1].split_whitespace().collect::<Vec<_>>(),
            ["/l/app.log", "2049:12", "tracking", "app", "100", "B", "60", "B", "40", "B"]
        );
        assert_eq!(
            lines[2].split_whitespace().collect::<Vec<_>>(),
            ["/l/app.log.1", "2049:13", "copy", "50", "B", "-", "-"]
        );
    }

    #[test]
    fn sizes_are_read_by_people() {
        assert_eq!(super::human_bytes(1023), "1023 B");
        assert_eq!(super::human_bytes(1536), "1.5 KiB");
        assert_eq!(super::human_bytes(12 << 20), "12.0 MiB");
        assert_eq!(super::human_bytes(5 << 40), "5.0 TiB");
    }

    #[test]
    fn a_flow_line_says_its_sink_state_and_lag_and_why_it_fails() {
        let ok = serde_json::json!({"name": "app", "sink": "kinesis", "state": "ok", "lag_bytes": 2048, "files": 3});
        assert_eq!(super::flow_line(&ok), "flow app -> kinesis: ok, lag 2.0 KiB, 3 files");
        let failing = serde_json::json!({"name": "app", "sink": "kinesis", "state": "failing", "lag_bytes": 0,
            "files": 1, "failing_seconds": 40, "last_error": "ResourceNotFoundException: no stream"});
        assert_eq!(
            super::flow_line(&failing),
            "flow app -> kinesis: failing, lag 0 B, 1 files (failing for 40 s: ResourceNotFoundException: no stream)"
        );
    }
}
