//! Amazon Kinesis Agent configurations (`/etc/aws-kinesis/agent.json` and `agent.d/*.json`)
//! turned into this collector's TOML, with every setting that could not be carried over
//! listed and why. `collector import-kinesis-agent` prints the result; `collector run
//! --config agent.json` uses it directly.

use std::fmt::Write as _;

use serde_json::{Map, Value};

/// The TOML, and the settings not carried over (each naming the file and the key).
pub struct Imported {
    pub toml: String,
    pub dropped: Vec<String>,
}

/// `files`: (name, text) of agent.json and any agent.d files, in that order.
pub fn import(files: &[(String, String)]) -> Result<Imported, String> {
    let mut toml =
        String::from("# Imported from the Kinesis Agent's configuration by `collector import-kinesis-agent`.\n");
    let mut dropped = Vec::new();
    let mut flows = Vec::new();
    let mut global = Map::new();
    for (name, text) in files {
        let value: Value = serde_json::from_str(text).map_err(|e| format!("{name}: not JSON: {e}"))?;
        let Value::Object(object) = value else { return Err(format!("{name}: expected a JSON object")) };
        for (key, v) in object {
            match key.as_str() {
                "flows" => {
                    let Value::Array(list) = v else { return Err(format!("{name}: flows: expected an array")) };
                    flows.extend(list.into_iter().map(|f| (name.clone(), f)));
                }
                _ => {
                    global.insert(key, v);
                }
            }
        }
    }
    for (key, v) in &global {
        let why = match key.as_str() {
            "kinesis.endpoint" | "firehose.endpoint" | "assumeRoleARN" | "assumeRoleExternalId" => continue,
            "awsAccessKeyId" | "awsSecretAccessKey" => {
                "static keys are not read from the config: use the instance role, IRSA, or AWS_* variables"
            }
            "cloudwatch.emitMetrics" | "cloudwatch.endpoint" | "cloudwatch.namespace" => continue,
            "checkpointFile" => "checkpoints are per inode in [collector] state_dir (default /var/lib/collector)",
            "sts.endpoint" => "STS comes from aws-config's default endpoint resolution",
            "shutdownTimeoutMillis"
            | "maxSendingThreads"
            | "sendingThreadsKeepAliveMillis"
            | "log.level"
            | "log.maxBackupIndex"
            | "log.maxFileSize"
            | "assumeRoleDurationSeconds" => "not needed here",
            "userDefinedCredentialsProvider.classname" | "userDefinedCredentialsProvider.location" => {
                "Java credential providers do not apply: use aws-config's default chain"
            }
            _ => "not a Kinesis Agent setting this importer knows",
        };
        // Secrets are named, never echoed.
        let shown = if key.starts_with("aws") { "(value not shown)".to_owned() } else { v.to_string() };
        dropped.push(format!("{key} = {shown}: {why}"));
    }
    if flows.is_empty() {
        return Err("no flows in the Kinesis Agent configuration".into());
    }
    // The agent sends its metrics unless told not to; same names, same namespace by default.
    if global.get("cloudwatch.emitMetrics").is_none_or(|v| v != false && v != "false") {
        let namespace = text(&global, "cloudwatch.namespace").unwrap_or_else(|| "AWSKinesisAgent".into());
        let _ = write!(toml, "\n[metrics.cloudwatch]\nnamespace = {}\n", quote(&namespace));
        if let Some(endpoint) = text(&global, "cloudwatch.endpoint") {
            let url = if endpoint.contains("://") { endpoint } else { format!("https://{endpoint}") };
            let _ = writeln!(toml, "endpoint_url = {}", quote(&url));
        }
    }
    for (i, (file, flow)) in flows.iter().enumerate() {
        let Value::Object(f) = flow else { return Err(format!("{file}: flows[{i}]: expected an object")) };
        let at = |key: &str| format!("{file}: flows[{i}].{key}");
        let pattern = text(f, "filePattern").ok_or_else(|| at("filePattern: missing"))?;
        let (kind, stream) = match (text(f, "kinesisStream"), text(f, "deliveryStream")) {
            (Some(s), None) => ("kinesis", s),
            (None, Some(s)) => ("firehose", s),
            _ => return Err(at("kinesisStream / deliveryStream: exactly one is needed")),
        };
        let _ = write!(
            toml,
            "\n[[flow]]\nname = {}\npaths = [{}]\n",
            quote(&format!("{stream}-{}", i + 1)),
            quote(&pattern)
        );
        // The Kinesis Agent starts new files at their end unless told otherwise.
        let start = match text(f, "initialPosition").as_deref() {
            Some("START_OF_FILE") => "start",
            Some("END_OF_FILE") | None => "end",
            Some(other) => return Err(at(&format!("initialPosition: `{other}`"))),
        };
        let _ = writeln!(toml, "initial_position = \"{start}\"");
        if let Some(re) = text(f, "multiLineStartPattern") {
            let _ = writeln!(toml, "multiline_start = {}", quote(&re));
        }
        if let Some(n) = f.get("skipHeaderLines").and_then(Value::as_u64) {
            let _ = writeln!(toml, "skip_header_lines = {n}");
        }
        if let Some(t) = text(f, "truncatedRecordTerminator") {
            let _ = writeln!(toml, "truncated_terminator = {}", quote(&t));
        }
        if let Some(ms) = f.get("maxBufferAgeMillis").and_then(Value::as_u64) {
            let _ = writeln!(toml, "max_batch_age = \"{ms}ms\"");
        }
        if let Some(options) = f.get("dataProcessingOptions") {
            toml.push_str(&transforms(options, &at, &mut dropped)?);
        }
        let _ = write!(toml, "\n[flow.sink]\nkind = \"{kind}\"\n");
        if kind == "kinesis" {
            let _ = writeln!(toml, "stream = {}", quote(&stream));
            let key = match text(f, "partitionKeyOption").as_deref() {
                Some("DETERMINISTIC") => "deterministic",
                Some("RANDOM") | None => "random",
                Some(other) => return Err(at(&format!("partitionKeyOption: `{other}`"))),
            };
            let _ = writeln!(
                toml,
                "partition_key = \"{key}\"   # as the Kinesis Agent did; \"file\" keeps each file's records in order on one shard"
            );
            // Off: the Kinesis Agent's consumers expect one line per record.
            toml.push_str(
                "# aggregate = true   # KPL aggregated records (far fewer records and payload units), once every consumer\n\
                 #                    # deaggregates (KCL, aws-kinesis-agg); needs partition_key = \"file\"\n",
            );
        } else {
            let _ = writeln!(toml, "delivery_stream = {}", quote(&stream));
            if f.contains_key("aggregatedRecordSizeBytes") {
                let _ = writeln!(toml, "aggregate = true   # whole records packed up to Firehose's 1,000 KiB");
            }
        }
        let endpoint = text(f, &format!("{kind}.endpoint")).or_else(|| text(&global, &format!("{kind}.endpoint")));
        if let Some(endpoint) = endpoint {
            let url = if endpoint.contains("://") { endpoint } else { format!("https://{endpoint}") };
            // kinesis.REGION.amazonaws.com / firehose.REGION.amazonaws.com
            if let Some(region) = url.split("://").nth(1).and_then(|h| h.split('.').nth(1)).filter(|r| r.contains('-'))
            {
                let _ = writeln!(toml, "region = {}", quote(region));
            }
            let _ = writeln!(toml, "endpoint_url = {}", quote(&url));
        }
        if let Some(role) = text(f, "assumeRoleARN").or_else(|| text(&global, "assumeRoleARN")) {
            let _ = writeln!(toml, "role_arn = {}", quote(&role));
            if let Some(id) = text(f, "assumeRoleExternalId").or_else(|| text(&global, "assumeRoleExternalId")) {
                let _ = writeln!(toml, "external_id = {}", quote(&id));
            }
        }
        for (key, v) in f {
            let why = match key.as_str() {
                "filePattern"
                | "kinesisStream"
                | "deliveryStream"
                | "initialPosition"
                | "multiLineStartPattern"
                | "skipHeaderLines"
                | "truncatedRecordTerminator"
                | "maxBufferAgeMillis"
                | "partitionKeyOption"
                | "aggregatedRecordSizeBytes"
                | "kinesis.endpoint"
                | "firehose.endpoint"
                | "assumeRoleARN"
                | "assumeRoleExternalId"
                | "dataProcessingOptions" => continue,
                "maxBufferSizeBytes" | "maxBufferSizeRecords" => {
                    "batches are sized by the API's limits (500 records, 5 MiB / 4 MiB) and max_batch_age"
                }
                "minTimeBetweenFilePollsMillis" => "files are not polled: the kernel reports each write",
                "retryInitialBackoffMillis" | "retryMaxBackoffMillis" | "publishQueueCapacity" => {
                    "retries use jittered backoff from 50 ms to 5 s"
                }
                "fileFooterPattern" => "not supported",
                _ => "not a Kinesis Agent flow setting this importer knows",
            };
            dropped.push(format!("{file}: flows[{i}].{key} = {v}: {why}"));
        }
    }
    if !dropped.is_empty() {
        toml.push_str("\n# Not carried over:\n");
        for d in &dropped {
            let _ = writeln!(toml, "#   {d}");
        }
    }
    Ok(Imported { toml, dropped })
}

/// dataProcessingOptions as `[[flow.transform]]` tables, in order. An option or key with no
/// equivalent is listed in `dropped`.
fn transforms(options: &Value, at: &dyn Fn(&str) -> String, dropped: &mut Vec<String>) -> Result<String, String> {
    let Value::Array(options) = options else { return Err(at("dataProcessingOptions: expected a list")) };
    let mut out = String::new();
    for (j, o) in options.iter().enumerate() {
        let Value::Object(o) = o else { return Err(at(&format!("dataProcessingOptions[{j}]: expected an object"))) };
        let name =
            text(o, "optionName").ok_or_else(|| at(&format!("dataProcessingOptions[{j}].optionName: missing")))?;
        let names = |key: &str| -> Option<String> {
            let list = o.get(key)?.as_array()?;
            Some(list.iter().map(|v| quote(v.as_str().unwrap_or_default())).collect::<Vec<_>>().join(", "))
        };
        let mut known = vec!["optionName"];
        let log_format = |format: &str| -> Result<&'static str, String> {
            Ok(match format {
                "COMMONAPACHELOG" => "common",
                "COMBINEDAPACHELOG" => "combined",
                "APACHEERRORLOG" => "apache_error",
                "SYSLOG" => "syslog",
                "RFC3339SYSLOG" => "rfc3339_syslog",
                other => return Err(at(&format!("dataProcessingOptions[{j}].logFormat: `{other}`"))),
            })
        };
        match name.as_str() {
            "SINGLELINE" => out.push_str("\n[[flow.transform]]\nkind = \"single_line\"\n"),
            "CSVTOJSON" => {
                let fields = names("customFieldNames")
                    .ok_or_else(|| at(&format!("dataProcessingOptions[{j}].customFieldNames: missing")))?;
                let _ = write!(out, "\n[[flow.transform]]\nkind = \"csv_to_json\"\nfields = [{fields}]\n");
                if let Some(d) = text(o, "delimiter") {
                    let _ = writeln!(out, "delimiter = {}", quote(&d.replace("\\t", "\t")));
                }
                known.extend(["customFieldNames", "delimiter"]);
            }
            "LOGTOJSON" | "ADDEC2METADATA" => {
                let format = text(o, "logFormat");
                if name == "LOGTOJSON" || format.is_some() {
                    let _ = write!(out, "\n[[flow.transform]]\nkind = \"log_to_json\"\n");
                    match (text(o, "matchPattern"), format) {
                        (Some(pattern), _) => {
                            let _ = writeln!(out, "pattern = {}", quote(&pattern));
                        }
                        (None, Some(format)) => {
                            let _ = writeln!(out, "format = \"{}\"", log_format(&format)?);
                        }
                        (None, None) => return Err(at(&format!("dataProcessingOptions[{j}].logFormat: missing"))),
                    }
                    if let Some(fields) = names("customFieldNames") {
                        let _ = writeln!(out, "fields = [{fields}]");
                    }
                }
                if name == "ADDEC2METADATA" {
                    out.push_str("\n[[flow.transform]]\nkind = \"add_ec2_metadata\"\n");
                    if o.contains_key("metadataTTL") {
                        dropped.push(at(&format!(
                            "dataProcessingOptions[{j}].metadataTTL: the instance's identity is read once at start-up"
                        )));
                    }
                    known.push("metadataTTL");
                }
                known.extend(["logFormat", "matchPattern", "customFieldNames"]);
            }
            "ADDMETADATA" => {
                let _ = write!(out, "\n[[flow.transform]]\nkind = \"add_metadata\"\n");
                if let Some(Value::Object(m)) = o.get("metadata") {
                    let fields: Vec<String> =
                        m.iter().map(|(k, v)| format!("{} = {}", quote(k), toml_value(v))).collect();
                    let _ = writeln!(out, "metadata = {{ {} }}", fields.join(", "));
                }
                if o.get("timestamp").is_some_and(|t| t == "true" || t == true) {
                    out.push_str("timestamp = true\n");
                }
                known.extend(["metadata", "timestamp"]);
            }
            other => {
                dropped.push(at(&format!("dataProcessingOptions[{j}] = {other}: no such transform here")));
                continue;
            }
        }
        for key in o.keys().filter(|k| !known.contains(&k.as_str())) {
            dropped.push(at(&format!("dataProcessingOptions[{j}].{key}: not a setting of {name} this importer knows")));
        }
    }
    Ok(out)
}

/// A string value of an agent.json object.
fn text(m: &Map<String, Value>, key: &str) -> Option<String> {
    m.get(key).and_then(Value::as_str).map(str::to_owned)
}

/// A JSON value as TOML (strings, numbers, booleans; anything else as its JSON text).
fn toml_value(v: &Value) -> String {
    match v {
        Value::String(s) => quote(s),
        Value::Number(_) | Value::Bool(_) => v.to_string(),
        other => quote(&other.to_string()),
    }
}

/// A TOML basic string.
fn quote(s: &str) -> String {
    let mut out = String::from('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, InitialPosition, PartitionKey, SinkConfig};

    /// Every documented option, in two files as agent.json and agent.d/ would hold them.
    const AGENT_JSON: &str = r#"{
      "cloudwatch.emitMetrics": true,
      "cloudwatch.endpoint": "monitoring.eu-west-1.amazonaws.com",
      "kinesis.endpoint": "kinesis.eu-west-1.amazonaws.com",
      "firehose.endpoint": "https://firehose.eu-west-1.amazonaws.com",
      "assumeRoleARN": "arn:aws:iam::123456789012:role/shipper",
      "assumeRoleExternalId": "ext-1",
      "awsAccessKeyId": "AKIAEXAMPLE",
      "awsSecretAccessKey": "s3cr3t-value",
      "checkpointFile": "/opt/aws-kinesis-agent/run/checkpoints",
      "flows": [
        {
          "filePattern": "/var/log/app/app.log*",
          "kinesisStream": "app-logs",
          "partitionKeyOption": "DETERMINISTIC",
          "initialPosition": "START_OF_FILE",
          "multiLineStartPattern": "^\\d{4}-\\d{2}-\\d{2} ",
          "skipHeaderLines": 1,
          "truncatedRecordTerminator": "\n",
          "maxBufferAgeMillis": 1000,
          "maxBufferSizeBytes": 1048576,
          "maxBufferSizeRecords": 500,
          "minTimeBetweenFilePollsMillis": 100,
          "dataProcessingOptions": [
            {"optionName": "SINGLELINE"},
            {"optionName": "LOGTOJSON", "logFormat": "COMMONAPACHELOG", "customFieldNames": ["h", "i", "u", "t", "r", "s", "b"]},
            {"optionName": "ADDMETADATA", "timestamp": "true", "metadata": {"env": "prod", "tier": 2}},
            {"optionName": "ADDEC2METADATA", "metadataTTL": 3600000},
            {"optionName": "UPPERCASE"}
          ]
        }
      ]
    }"#;
    const AGENT_D: &str = r#"{
      "flows": [
        { "filePattern": "/var/log/nginx/access.log", "deliveryStream": "web \"access\"", "aggregatedRecordSizeBytes": 1000000,
          "dataProcessingOptions": [{"optionName": "CSVTOJSON", "customFieldNames": ["a", "b"], "delimiter": "\\t"}] }
      ]
    }"#;

    fn imported() -> Imported {
        import(&[("agent.json".into(), AGENT_JSON.into()), ("agent.d/web.json".into(), AGENT_D.into())]).unwrap()
    }

    #[test]
    fn every_documented_option_is_carried_over_or_listed() {
        let i = imported();
        let c = Config::parse("imported.toml", &i.toml).unwrap_or_else(|e| panic!("{e}\n{}", i.toml));
        let app = &c.flows[0];
        assert_eq!(app.paths, ["/var/log/app/app.log*"]);
        assert_eq!(app.initial_position, InitialPosition::Start);
        assert_eq!(app.multiline_start.as_ref().map(|r| r.as_str()), Some("^\\d{4}-\\d{2}-\\d{2} "));
        assert_eq!((app.skip_header_lines, app.truncated_terminator.as_slice()), (1, &b"\n"[..]));
        assert_eq!(app.max_batch_age, std::time::Duration::from_millis(1000));
        let SinkConfig::Kinesis(k) = &app.sink else { panic!("{:?}", app.sink) };
        assert_eq!((k.stream.as_str(), k.partition_key), ("app-logs", PartitionKey::Deterministic));
        assert_eq!(k.access.region.as_deref(), Some("eu-west-1"));
        assert_eq!(k.access.endpoint_url.as_deref(), Some("https://kinesis.eu-west-1.amazonaws.com"));
        assert_eq!(k.access.role_arn.as_deref(), Some("arn:aws:iam::123456789012:role/shipper"));
        assert_eq!(k.access.external_id.as_deref(), Some("ext-1"));

        use crate::transform::Step;
        match &app.transforms.steps[..] {
            [
                Step::SingleLine,
                Step::LogToJson(_),
                Step::AddMetadata { fields, timestamp: true },
                Step::AddEc2Metadata,
            ] => {
                assert_eq!((fields["env"].as_str(), fields["tier"].as_i64()), (Some("prod"), Some(2)));
            }
            other => panic!("{other:?}"),
        }

        let cloudwatch = c.cloudwatch.as_ref().expect("the agent's metrics carried over");
        assert_eq!(cloudwatch.namespace, "AWSKinesisAgent");
        assert_eq!(cloudwatch.access.endpoint_url.as_deref(), Some("https://monitoring.eu-west-1.amazonaws.com"));

        let web = &c.flows[1];
        match &web.transforms.steps[..] {
            [Step::CsvToJson { fields, delimiter: b'\t' }] => assert_eq!(fields, &["a", "b"]),
            other => panic!("{other:?}"),
        }
        assert_eq!(web.initial_position, InitialPosition::End, "the Kinesis Agent's default");
        let SinkConfig::Firehose(f) = &web.sink else { panic!("{:?}", web.sink) };
        assert_eq!((f.delivery_stream.as_str(), f.aggregate), ("web \"access\"", true));
        assert_eq!(f.access.endpoint_url.as_deref(), Some("https://firehose.eu-west-1.amazonaws.com"));

        let dropped = i.dropped.join("\n");
        for key in [
            "awsAccessKeyId",
            "awsSecretAccessKey",
            "checkpointFile",
            "flows[0].maxBufferSizeBytes",
            "flows[0].minTimeBetweenFilePollsMillis",
            "flows[0].dataProcessingOptions[3].metadataTTL",
            "flows[0].dataProcessingOptions[4] = UPPERCASE",
        ] {
            assert!(dropped.contains(key), "{key} is listed as not carried over:\n{dropped}");
        }
        assert!(!i.toml.contains("s3cr3t-value") && !dropped.contains("s3cr3t-value"), "secrets are never echoed");
        assert!(i.toml.contains("# Not carried over:"));
    }

    #[test]
    fn bad_agent_configs_say_which_flow_and_key() {
        let e = |t: &str| import(&[("a.json".into(), t.into())]).err().unwrap();
        assert_eq!(e(r#"{"flows": [{"kinesisStream": "s"}]}"#), "a.json: flows[0].filePattern: missing");
        assert_eq!(
            e(r#"{"flows": [{"filePattern": "/x", "kinesisStream": "s", "deliveryStream": "d"}]}"#),
            "a.json: flows[0].kinesisStream / deliveryStream: exactly one is needed"
        );
        assert!(e("{").starts_with("a.json: not JSON"));
        assert_eq!(e(r#"{"flows": []}"#), "no flows in the Kinesis Agent configuration");
    }
}
