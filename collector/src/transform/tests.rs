use std::path::Path;

use serde_json::{Value, json};

use super::*;

fn run(steps: Vec<Step>, line: &str) -> Output {
    let cx = Context { path: Path::new("/var/log/app.log"), writer: None, ec2: None };
    Pipeline { steps, drop_unparsed: false }.apply(line.as_bytes(), &cx)
}

fn object(output: Output) -> Value {
    match output {
        Output::Json(bytes) => serde_json::from_slice(&bytes).unwrap(),
        other => panic!("not JSON: {other:?}"),
    }
}

fn parsed(format: &str, line: &str) -> Value {
    object(run(vec![Step::LogToJson(log_formats::LogParser::format(format, None).unwrap())], line))
}

#[test]
fn apache_access_logs_as_the_apache_documentation_shows_them() {
    let common = r#"127.0.0.1 - frank [10/Oct/2000:13:55:36 -0700] "GET /apache_pb.gif HTTP/1.0" 200 2326"#;
    assert_eq!(
        parsed("common", common),
        json!({"host": "127.0.0.1", "ident": "-", "authuser": "frank", "datetime": "10/Oct/2000:13:55:36 -0700",
               "request": "GET /apache_pb.gif HTTP/1.0", "response": "200", "bytes": "2326"})
    );
    let combined = format!(r#"{common} "http://www.example.com/start.html" "Mozilla/4.08 [en] (Win98; I ;Nav)""#);
    let c = parsed("combined", &combined);
    assert_eq!(
        (c["referer"].as_str(), c["agent"].as_str()),
        (Some("http://www.example.com/start.html"), Some("Mozilla/4.08 [en] (Win98; I ;Nav)"))
    );
    assert_eq!(c["bytes"], "2326");
    // An escaped quote inside the request; "-" for no bytes.
    let escaped = r#"10.0.0.9 - - [28/Nov/2026:02:36:38 +0000] "GET /a\"b HTTP/1.1" 304 -"#;
    assert_eq!(parsed("common", escaped)["request"], r#"GET /a\"b HTTP/1.1"#);
    // A combined line is not a common one (trailing fields), and vice versa.
    assert_eq!(
        run(vec![Step::LogToJson(log_formats::LogParser::format("common", None).unwrap())], &combined),
        Output::Unparsed
    );
    assert_eq!(
        run(vec![Step::LogToJson(log_formats::LogParser::format("combined", None).unwrap())], common),
        Output::Unparsed
    );
}

#[test]
fn apache_error_logs_of_both_versions() {
    let v24 = "[Fri Sep 09 10:42:29.902022 2011] [core:error] [pid 35708:tid 4328636416] [client 72.15.99.187] File does not exist: /usr/local/apache2/htdocs/favicon.ico";
    assert_eq!(
        parsed("apache_error", v24),
        json!({"timestamp": "Fri Sep 09 10:42:29.902022 2011", "module": "core", "severity": "error", "processid": "35708",
               "threadid": "4328636416", "client": "72.15.99.187", "message": "File does not exist: /usr/local/apache2/htdocs/favicon.ico"})
    );
    let v22 = "[Wed Oct 11 14:32:52 2000] [error] [client 127.0.0.1] client denied by server configuration: /export/home/live/ap/htdocs/test";
    assert_eq!(
        parsed("apache_error", v22),
        json!({"timestamp": "Wed Oct 11 14:32:52 2000", "severity": "error", "client": "127.0.0.1",
               "message": "client denied by server configuration: /export/home/live/ap/htdocs/test"})
    );
}

#[test]
fn syslog_lines_in_both_timestamp_styles() {
    let traditional =
        "Nov 28 02:36:38 ip-10-0-0-1 sshd[1234]: Accepted publickey for ec2-user from 10.0.0.2 port 50000 ssh2";
    assert_eq!(
        parsed("syslog", traditional),
        json!({"timestamp": "Nov 28 02:36:38", "hostname": "ip-10-0-0-1", "program": "sshd", "processid": "1234",
               "message": "Accepted publickey for ec2-user from 10.0.0.2 port 50000 ssh2"})
    );
    // As rsyslog writes a message that came as RFC 5424 (no colon after the tag).
    let from_5424 = parsed("syslog", "Nov 28 02:47:36 vm shipper-test[4242] message 0: disk at 91%");
    assert_eq!(
        (from_5424["program"].as_str(), from_5424["message"].as_str()),
        (Some("shipper-test"), Some("message 0: disk at 91%"))
    );
    let kernel = parsed("syslog", "Nov  8 02:36:38 host kernel: [    0.000000] Linux version 6.18.0");
    assert_eq!((kernel["timestamp"].as_str(), kernel["program"].as_str()), (Some("Nov  8 02:36:38"), Some("kernel")));
    assert!(kernel.get("processid").is_none(), "no [pid]: no field");
    let rfc3339 = "2026-11-28T02:36:38.123456+00:00 ip-10-0-0-1 systemd[1]: Started Session 3 of user ec2-user.";
    let r = parsed("rfc3339_syslog", rfc3339);
    assert_eq!(
        (r["timestamp"].as_str(), r["processid"].as_str()),
        (Some("2026-11-28T02:36:38.123456+00:00"), Some("1"))
    );
    assert_eq!(
        run(vec![Step::LogToJson(log_formats::LogParser::format("syslog", None).unwrap())], rfc3339),
        Output::Unparsed
    );
}

#[test]
fn container_runtime_lines() {
    let line = "2026-11-28T02:36:38.123456789Z stderr F panic: runtime error: index out of range";
    assert_eq!(
        parsed("cri", line),
        json!({"time": "2026-11-28T02:36:38.123456789Z", "stream": "stderr", "tag": "F", "message": "panic: runtime error: index out of range"})
    );
}

#[test]
fn renamed_fields_and_own_patterns() {
    let names = ["h", "i", "u", "t", "r", "s", "b"].map(str::to_owned).to_vec();
    let p = log_formats::LogParser::format("common", Some(names)).unwrap();
    let out = object(run(vec![Step::LogToJson(p)], r#"1.2.3.4 - - [x] "GET / HTTP/1.1" 200 5"#));
    assert_eq!((out["h"].as_str(), out["s"].as_str()), (Some("1.2.3.4"), Some("200")));
    assert!(log_formats::LogParser::format("common", Some(vec!["a".into()])).unwrap_err().contains("has 7 fields"));
    let own = log_formats::LogParser::pattern(r"^(?P<level>[A-Z]+) (?P<msg>.*)$", None).unwrap();
    assert_eq!(
        object(run(vec![Step::LogToJson(own)], "WARN disk 91% full")),
        json!({"level": "WARN", "msg": "disk 91% full"})
    );
    assert!(log_formats::LogParser::pattern(r"^(\w+) (.*)$", None).unwrap_err().contains("name every group"));
    assert!(log_formats::LogParser::format("nginx", None).unwrap_err().contains("expected one of common"));
}

#[test]
fn csv_with_quotes_and_a_tab_delimiter() {
    let fields = vec!["time".to_owned(), "user".to_owned(), "action".to_owned()];
    let step = |d| vec![Step::CsvToJson { fields: fields.clone(), delimiter: d }];
    assert_eq!(
        object(run(step(b','), r#"2026-11-28,"Doe, Jane","said ""hi""""#)),
        json!({"time": "2026-11-28", "user": "Doe, Jane", "action": "said \"hi\""})
    );
    assert_eq!(object(run(step(b'\t'), "t\tu\ta,b")), json!({"time": "t", "user": "u", "action": "a,b"}));
    assert_eq!(run(step(b','), "only,two"), Output::Unparsed, "too few values");
    assert_eq!(run(step(b','), "a,b,c,d"), Output::Unparsed, "too many values");
    assert_eq!(run(step(b','), r#"a,"unclosed,c"#), Output::Unparsed);
}

#[test]
fn single_line_joins_a_stack_trace() {
    let trace = "Exception in thread \"main\" java.lang.IllegalStateException: boom\n    at App.run(App.java:10)\n\tat App.main(App.java:3)\n";
    assert_eq!(
        run(vec![Step::SingleLine], trace),
        Output::Text(b"Exception in thread \"main\" java.lang.IllegalStateException: boom at App.run(App.java:10) at App.main(App.java:3)".to_vec())
    );
}

#[test]
fn add_steps_wrap_text_and_extend_objects() {
    let writer = crate::sink::Writer {
        pid: 42,
        comm: "nginx".into(),
        cgroup_id: 7,
        cgroup: Some("/system.slice/docker-ab.scope".into()),
        container_id: None,
    };
    let ec2 = serde_json::Map::from_iter([("instanceId".to_owned(), json!("i-0abc"))]);
    let path = Path::new("/var/log/pods/shop_web-7d9f_0f6e2c1a-9b7d-4c1e-8a2b-3c4d5e6f7a8b/nginx/0.log");
    let cx = Context { path, writer: Some(&writer), ec2: Some(&ec2) };
    let pipeline = Pipeline {
        steps: vec![
            Step::AddMetadata {
                fields: serde_json::Map::from_iter([("env".to_owned(), json!("prod"))]),
                timestamp: true,
            },
            Step::AddWriter,
            Step::AddEc2Metadata,
            Step::AddKubernetes,
        ],
        drop_unparsed: false,
    };
    let out = object(pipeline.apply(b"hello", &cx));
    assert_eq!(out["message"], "hello");
    assert_eq!(out["env"], "prod");
    assert!(humantime::parse_rfc3339(out["timestamp"].as_str().unwrap()).is_ok(), "{}", out["timestamp"]);
    assert_eq!((out["pid"].as_u64(), out["comm"].as_str()), (Some(42), Some("nginx")));
    assert_eq!(out["cgroup"], "/system.slice/docker-ab.scope");
    assert_eq!(out["ec2"]["instanceId"], "i-0abc");
    assert_eq!(
        out["kubernetes"],
        json!({"namespace": "shop", "pod": "web-7d9f", "pod_uid": "0f6e2c1a-9b7d-4c1e-8a2b-3c4d5e6f7a8b", "container": "nginx"})
    );
    // Outside /var/log/pods there is nothing to add; a parsed record keeps its fields.
    let cx = Context { path: Path::new("/var/log/app.log"), writer: None, ec2: None };
    let parse_then_add = Pipeline {
        steps: vec![
            Step::LogToJson(log_formats::LogParser::format("cri", None).unwrap()),
            Step::AddKubernetes,
            Step::AddWriter,
        ],
        drop_unparsed: false,
    };
    assert_eq!(
        object(parse_then_add.apply(b"t stdout F hi", &cx)),
        json!({"time": "t", "stream": "stdout", "tag": "F", "message": "hi"})
    );
}
