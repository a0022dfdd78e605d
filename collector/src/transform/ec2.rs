//! add_ec2_metadata: the instance's identity from the instance metadata service, read once at
//! start-up through the AWS SDK's IMDSv2 client (`aws_config::imds`: the session token, its
//! retries and timeouts, and the SDK's endpoint settings), which the sinks compile in anyway.

use std::time::Duration;

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
#[cfg(feature = "kinesis")]
pub fn fetch(endpoint: &str) -> anyhow::Result<Map<String, Value>> {
    use anyhow::{Context as _, anyhow};

    let client = aws_config::imds::Client::builder()
        .endpoint(endpoint)
        .map_err(|e| anyhow!("{ENDPOINT_VARIABLE}={endpoint}: {e}"))?
        .connect_timeout(TIMEOUT)
        .read_timeout(TIMEOUT)
        .build();
    let runtime = crate::aws::SinkRuntime::new()?;
    runtime.block_on(async {
        let mut out = Map::new();
        for (name, path) in FIELDS {
            match client.get(format!("/latest/{path}")).await {
                Ok(value) => {
                    out.insert(name.to_owned(), value.as_ref().trim().to_owned().into());
                }
                Err(e) if name == "instanceId" => {
                    return Err(e).with_context(|| format!("reading {endpoint}/latest/{path}"));
                }
                Err(e) => tracing::debug!(path, "instance metadata field not available: {e}"),
            }
        }
        // The account is only in the identity document.
        if let Ok(document) = client.get("/latest/dynamic/instance-identity/document").await
            && let Ok(Value::Object(doc)) = serde_json::from_str::<Value>(document.as_ref())
            && let Some(account) = doc.get("accountId")
        {
            out.insert("accountId".into(), account.clone());
        }
        Ok(out)
    })?
}

#[cfg(not(feature = "kinesis"))]
pub fn fetch(_endpoint: &str) -> anyhow::Result<Map<String, Value>> {
    anyhow::bail!("this collector was built without the AWS SDK, whose client reads instance metadata")
}
