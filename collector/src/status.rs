//! `collector status`: the running collector's tracked files as a table, from its /status
//! endpoint (the address is the config's `[metrics] listen`).

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
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

pub fn print(config: &Path) -> Result<(), Error> {
    let config = crate::config::Config::load(config)?;
    let listen = config.metrics_listen.ok_or(Error::NoAddress)?;
    let files = fetch(listen).with_context(|| format!("asking the collector at {listen} (is it running?)"))?;
    println!("{}", table(&files));
    Ok(())
}

fn fetch(listen: std::net::SocketAddr) -> anyhow::Result<Vec<Value>> {
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
            size.to_string(),
            if state == "copy" { "-".into() } else { shipped.to_string() },
            if state == "copy" { "-".into() } else { size.saturating_sub(shipped).to_string() },
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
            ["/l/app.log", "2049:12", "tracking", "app", "100", "60", "40"]
        );
        assert_eq!(
            lines[2].split_whitespace().collect::<Vec<_>>(),
            ["/l/app.log.1", "2049:13", "copy", "50", "-", "-"]
        );
    }
}
