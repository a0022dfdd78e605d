//! add_ec2_metadata: the instance's identity from the instance metadata service (IMDSv2: a
//! session token first, then GETs carrying it), read once at start-up. Plain HTTP to a
//! link-local address, so a few lines of std networking rather than an HTTP client.

use std::{
    io::{Read as _, Write as _},
    net::{TcpStream, ToSocketAddrs as _},
    time::Duration,
};

use anyhow::{Context as _, bail};
use serde_json::{Map, Value};

/// The endpoint the AWS SDKs use, and the variable they read to change it.
const DEFAULT_ENDPOINT: &str = "http://169.254.169.254";
const ENDPOINT_VARIABLE: &str = "AWS_EC2_METADATA_SERVICE_ENDPOINT";
const TIMEOUT: Duration = Duration::from_secs(2);

/// Field names as the Kinesis Agent's ADDEC2METADATA gives them, and where each is read.
const FIELDS: [(&str, &str); 6] = [
    ("instanceId", "meta-data/instance-id"),
    ("instanceType", "meta-data/instance-type"),
    ("amiId", "meta-data/ami-id"),
    ("region", "meta-data/placement/region"),
    ("availabilityZone", "meta-data/placement/availability-zone"),
    ("privateIp", "meta-data/local-ipv4"),
];

pub fn endpoint() -> String {
    std::env::var(ENDPOINT_VARIABLE).unwrap_or_else(|_| DEFAULT_ENDPOINT.to_owned())
}

/// The instance's identity; an error names the endpoint and what failed. The instance id
/// is required (without it this is not an instance); other fields are left out if absent.
pub fn fetch(endpoint: &str) -> anyhow::Result<Map<String, Value>> {
    let host = endpoint
        .strip_prefix("http://")
        .with_context(|| format!("{ENDPOINT_VARIABLE}={endpoint}: expected an http:// URL"))?
        .trim_end_matches('/');
    let (status, token) = request(host, "PUT", "/latest/api/token", "X-aws-ec2-metadata-token-ttl-seconds: 300")
        .with_context(|| format!("asking {endpoint} for an IMDSv2 token"))?;
    if status != 200 {
        bail!("{endpoint}/latest/api/token answered HTTP {status}");
    }
    let auth = format!("X-aws-ec2-metadata-token: {}", token.trim());
    let mut out = Map::new();
    for (name, path) in FIELDS {
        let (status, body) = request(host, "GET", &format!("/latest/{path}"), &auth)
            .with_context(|| format!("reading {endpoint}/latest/{path}"))?;
        match status {
            200 => {
                out.insert(name.to_owned(), body.trim().to_owned().into());
            }
            _ if name == "instanceId" => bail!("{endpoint}/latest/{path} answered HTTP {status}"),
            _ => tracing::debug!(path, status, "instance metadata field not available"),
        }
    }
    // The account is only in the identity document.
    if let Ok((200, body)) = request(host, "GET", "/latest/dynamic/instance-identity/document", &auth)
        && let Ok(Value::Object(doc)) = serde_json::from_str::<Value>(&body)
        && let Some(account) = doc.get("accountId")
    {
        out.insert("accountId".into(), account.clone());
    }
    Ok(out)
}

/// One HTTP/1.1 request on its own connection: (status, body).
fn request(host: &str, method: &str, path: &str, header: &str) -> anyhow::Result<(u16, String)> {
    let addr = host.to_socket_addrs()?.next().context("no address")?;
    let mut stream = TcpStream::connect_timeout(&addr, TIMEOUT)?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.set_write_timeout(Some(TIMEOUT))?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\n{header}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let response = String::from_utf8_lossy(&response);
    let (head, body) = response.split_once("\r\n\r\n").context("a response without a header end")?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("not an HTTP status line: {:?}", head.lines().next()))?;
    if head.lines().any(|l| l.to_ascii_lowercase().starts_with("transfer-encoding: chunked")) {
        bail!("chunked responses are not expected from the metadata service");
    }
    Ok((status, body.to_owned()))
}
