use super::*;

#[test]
fn the_readme_example_parses() {
    let readme = include_str!("../../../README.md");
    let example = readme.split("```toml\n").nth(1).and_then(|rest| rest.split("```").next()).expect("a toml block");
    let c = Config::parse("README.md", example).unwrap_or_else(|e| panic!("{e}"));
    let f = &c.flows[0];
    assert_eq!((f.name.as_str(), f.paths.len(), f.exclude.len()), ("app", 2, 1));
    assert_eq!((f.max_record_bytes, f.truncated_terminator.as_slice()), (1 << 20, &b"\n"[..]));
}

const GOOD: &str = r#"
[collector]
state_dir = "/var/lib/collector"

[[flow]]
name = "app"
paths = ["/var/log/app/*.log"]
multiline_start = '^\d{4}-'
rotated_idle = "2m"

[flow.sink]
kind = "file"
path = "/tmp/out.jsonl"
"#;

#[test]
fn a_good_config_parses_with_defaults() {
    let c = Config::parse("c.toml", GOOD).unwrap();
    let f = &c.flows[0];
    assert_eq!((f.name.as_str(), f.rotated_idle, f.max_record_bytes), ("app", Duration::from_secs(120), 1 << 20));
    assert_eq!(f.initial_position, InitialPosition::Start);
    assert!(matches!(f.sink, SinkConfig::File { format: FileFormat::Json, .. }));
}

fn error(text: &str) -> String {
    Config::parse("c.toml", text).unwrap_err().to_string()
}

#[test]
fn errors_name_file_line_and_key() {
    assert_eq!(
        error(&GOOD.replace("rotated_idle = \"2m\"", "rotated_idle = \"soon\"")),
        "c.toml:9: flow[0].rotated_idle: `soon`: expected number at 0 (write e.g. \"500ms\", \"5m\")"
    );
    assert_eq!(
        error(&GOOD.replace(r"'^\d{4}-'", "'(unclosed'")),
        "c.toml:8: flow[0].multiline_start: bad regex: error: unclosed group"
    );
    assert!(
        error(&GOOD.replace("kind = \"file\"", "kind = \"kafka\""))
            .starts_with("c.toml:12: flow[0].sink.kind: `kafka`")
    );
    let relative = error(&GOOD.replace("/var/log/app/*.log", "logs/*.log"));
    assert!(relative.starts_with("c.toml:7: flow[0].paths: `logs/*.log` must be an absolute path"), "{relative}");
    let files =
        |n: &str| GOOD.replace("state_dir = \"/var/lib/collector\"", &format!("state_dir = \"/s\"\nmax_files = {n}"));
    assert_eq!(
        error(&files("100")),
        "c.toml:4: collector.max_files: must be from 1024 to 1048576 (files held at once)"
    );
    assert_eq!(Config::parse("c.toml", &files("200000")).unwrap().max_files, 200_000);
    assert_eq!(Config::parse("c.toml", GOOD).unwrap().max_files, DEFAULT_MAX_FILES);
    let unknown = error(&GOOD.replace("rotated_idle", "rotate_idle"));
    assert!(unknown.starts_with("c.toml:9: rotate_idle: unknown field `rotate_idle`"), "{unknown}");
}

#[test]
fn aws_sinks_parse_and_refuse_keys_of_the_other_kind() {
    let sink = |lines: &str| GOOD.replace("kind = \"file\"\npath = \"/tmp/out.jsonl\"", lines);
    let c = Config::parse(
        "c.toml",
        &sink("kind = \"firehose\"\ndelivery_stream = \"logs\"\naggregate = true\nrole_arn = \"arn:r\"\nexternal_id = \"x\""),
    )
    .unwrap();
    let SinkConfig::Firehose(f) = &c.flows[0].sink else { panic!("{:?}", c.flows[0].sink) };
    assert_eq!((f.delivery_stream.as_str(), f.aggregate, f.envelope), ("logs", true, false));
    assert_eq!((f.access.role_arn.as_deref(), f.access.external_id.as_deref()), (Some("arn:r"), Some("x")));
    assert_eq!(c.flows[0].max_record_bytes, FIREHOSE_RECORD_LIMIT - 1);
    assert_eq!(
        error(&sink("kind = \"firehose\"")),
        "c.toml:12: flow[0].sink.delivery_stream: the firehose sink needs a delivery_stream"
    );
    assert_eq!(
        error(&sink("kind = \"firehose\"\ndelivery_stream = \"logs\"\nstream = \"logs\"")),
        "c.toml:14: flow[0].sink.stream: only the kinesis sink takes `stream`"
    );
    let kinesis = |extra: &str| format!("kind = \"kinesis\"\nstream = \"logs\"\n{extra}");
    let aggregate = |extra: &str| match &Config::parse("c.toml", &sink(&kinesis(extra))).unwrap().flows[0].sink {
        SinkConfig::Kinesis(k) => k.aggregate,
        _ => panic!(),
    };
    assert_eq!(aggregate(""), None, "off unless asked for");
    assert_eq!(aggregate("aggregate = true"), Some(crate::config::sinks::DEFAULT_AGGREGATE_MAX_BYTES));
    assert_eq!(aggregate("aggregate = true\naggregate_max_bytes = 25000"), Some(25_000));
    assert_eq!(
        error(&sink(&kinesis("aggregate = true\npartition_key = \"random\""))),
        "c.toml:15: flow[0].sink.partition_key: aggregate = true needs partition_key = \"file\" \
         (an aggregated record holds one file's records, under one key)"
    );
    assert_eq!(
        error(&sink(&kinesis("aggregate_max_bytes = 25000"))),
        "c.toml:14: flow[0].sink.aggregate_max_bytes: needs aggregate = true"
    );
    assert_eq!(
        error(&sink(&kinesis("aggregate = true\naggregate_max_bytes = 2000000"))),
        "c.toml:15: flow[0].sink.aggregate_max_bytes: 2000000: expected 1024 to 1048576"
    );
    assert_eq!(
        error(&sink("kind = \"firehose\"\ndelivery_stream = \"logs\"\naggregate_max_bytes = 25000")),
        "c.toml:14: flow[0].sink.aggregate_max_bytes: only the kinesis sink takes `aggregate_max_bytes`"
    );
    assert_eq!(
        error(&sink("kind = \"null\"\naggregate = true")),
        "c.toml:13: flow[0].sink.aggregate: only the kinesis or firehose sink takes `aggregate`"
    );
    assert_eq!(f.requests_in_flight, crate::config::sinks::DEFAULT_REQUESTS_IN_FLIGHT);
    let c = Config::parse("c.toml", &sink("kind = \"kinesis\"\nstream = \"logs\"\nrequests_in_flight = 16")).unwrap();
    let SinkConfig::Kinesis(k) = &c.flows[0].sink else { panic!() };
    assert_eq!(k.requests_in_flight, 16);
    assert_eq!(
        error(&sink("kind = \"kinesis\"\nstream = \"logs\"\nrequests_in_flight = 0")),
        "c.toml:14: flow[0].sink.requests_in_flight: 0: expected 1 to 64"
    );
    let c = Config::parse("c.toml", &sink("kind = \"kinesis\"\nstream = \"logs\"\nrequest_timeout = \"1m\"")).unwrap();
    let SinkConfig::Kinesis(k) = &c.flows[0].sink else { panic!() };
    assert_eq!(k.access.request_timeout, Some(Duration::from_secs(60)));
    assert_eq!(
        error(&sink("kind = \"firehose\"\ndelivery_stream = \"logs\"\nrequest_timeout = \"10ms\"")),
        "c.toml:14: flow[0].sink.request_timeout: `10ms`: expected 1s to 5m"
    );
    assert_eq!(
        error(&sink("kind = \"null\"\nrequest_timeout = \"10s\"")),
        "c.toml:13: flow[0].sink.request_timeout: only the kinesis or firehose sink takes `request_timeout`"
    );
    assert_eq!(
        error(&sink("kind = \"file\"\npath = \"/tmp/o\"\nrequests_in_flight = 2")),
        "c.toml:14: flow[0].sink.requests_in_flight: only the kinesis or firehose sink takes `requests_in_flight`"
    );
    let c =
        Config::parse("c.toml", &sink("kind = \"kinesis\"\nstream = \"logs\"\nendpoint_url = \"http://127.0.0.1:1\""))
            .unwrap();
    let SinkConfig::Kinesis(k) = &c.flows[0].sink else { panic!() };
    assert_eq!((k.stream.as_str(), k.partition_key), ("logs", PartitionKey::File));
    assert_eq!(k.access.endpoint_url.as_deref(), Some("http://127.0.0.1:1"));
    assert_eq!(c.flows[0].max_record_bytes, KINESIS_RECORD_LIMIT - KINESIS_KEY_ROOM);
}

#[test]
fn environment_variables_are_expanded_and_a_missing_one_is_named() {
    let var = |name: &str| (name == "STREAM").then(|| "app-logs".to_owned());
    assert_eq!(expand_env("stream = \"${STREAM}\"", &var).unwrap(), "stream = \"app-logs\"");
    assert_eq!(expand_env("x = \"$${STREAM}\"", &var).unwrap(), "x = \"${STREAM}\"");
    assert_eq!(
        expand_env("a\nb = \"${NOPE}\"", &var).unwrap_err(),
        (7, "${NOPE}: environment variable NOPE is not set".into())
    );
    assert!(expand_env("x = \"${BAD NAME}\"", &var).unwrap_err().1.contains("not a variable name"));
    // Not in comments; a `#` in a string starts none.
    let commented = "# stream = \"${NOPE}\"\nx = 1 # ${NOPE}\ny = \"#\\\" ${STREAM}\" # ${NOPE}\nz = '#' # '${NOPE}\n";
    assert_eq!(
        expand_env(commented, &var).unwrap(),
        "# stream = \"${NOPE}\"\nx = 1 # ${NOPE}\ny = \"#\\\" app-logs\" # ${NOPE}\nz = '#' # '${NOPE}\n"
    );
    let multi = "a = \"\"\"\n# ${STREAM}\n\"\"\"\nb = '''\n# ${STREAM}'''\n";
    assert_eq!(expand_env(multi, &var).unwrap(), "a = \"\"\"\n# app-logs\n\"\"\"\nb = '''\n# app-logs'''\n");
    // Through the parser: the error names the file and the line.
    let text = GOOD.replace("/tmp/out.jsonl", "${COLLECTOR_TEST_SURELY_UNSET}");
    assert_eq!(
        error(&text),
        "c.toml:13: -: ${COLLECTOR_TEST_SURELY_UNSET}: environment variable COLLECTOR_TEST_SURELY_UNSET is not set"
    );
}

#[test]
fn transforms_parse_in_order_and_bad_ones_are_located() {
    let with = |t: &str| GOOD.replace("[flow.sink]", &format!("{t}\n[flow.sink]"));
    let c = Config::parse(
        "c.toml",
        &with("on_parse_error = \"drop\"\n[[flow.transform]]\nkind = \"log_to_json\"\nformat = \"combined\"\n[[flow.transform]]\nkind = \"add_metadata\"\nmetadata = { env = \"prod\", shard = 3 }\n[[flow.transform]]\nkind = \"add_writer\"\n"),
    )
    .unwrap();
    let t = &c.flows[0].transforms;
    assert!(t.drop_unparsed && t.needs_writer() && !t.needs_ec2());
    assert!(matches!(t.steps[..], [Step::LogToJson(_), Step::AddMetadata { .. }, Step::AddWriter]));
    assert_eq!(
        error(&with("[[flow.transform]]\nkind = \"log_to_json\"\nformat = \"nginx\"")),
        "c.toml:13: flow[0].transform[0].format: `nginx`: expected one of common, combined, apache_error, syslog, rfc3339_syslog, cri"
    );
    assert_eq!(
        error(&with("[[flow.transform]]\nkind = \"csv_to_json\"\nformat = \"common\"")),
        "c.toml:13: flow[0].transform[0].format: `csv_to_json` takes no `format`"
    );
    assert_eq!(
        error(&with("[[flow.transform]]\nkind = \"csv_to_json\"")),
        "c.toml:12: flow[0].transform[0].fields: csv_to_json needs the values' names in `fields`"
    );
    assert!(
        error(&with("[[flow.transform]]\nkind = \"jq\"")).starts_with("c.toml:12: flow[0].transform[0].kind: `jq`")
    );
    assert!(error(&with("on_parse_error = \"skip\"")).starts_with("c.toml:11: flow[0].on_parse_error: `skip`"));
}

#[test]
fn files_merge_flows_and_name_the_file_of_a_clash() {
    let flow = |name: &str| {
        format!("[[flow]]\nname = \"{name}\"\npaths = [\"/var/log/{name}/*.log\"]\n[flow.sink]\nkind = \"null\"\n")
    };
    let base =
        format!("[collector]\nstate_dir = \"/var/lib/c\"\n[metrics]\nlisten = \"127.0.0.1:9108\"\n{}", flow("app"));
    let texts = |extra: String| {
        vec![("collector.toml".to_owned(), base.clone()), ("collector.d/10-web.toml".to_owned(), extra)]
    };
    let c = Config::merge(&texts(flow("web"))).unwrap();
    assert_eq!(c.flows.iter().map(|f| f.name.as_str()).collect::<Vec<_>>(), ["app", "web"]);
    assert_eq!((c.state_dir.to_str(), c.metrics_listen.map(|a| a.port())), (Some("/var/lib/c"), Some(9108)));
    let err = |extra: String| Config::merge(&texts(extra)).unwrap_err().to_string();
    assert_eq!(
        err(format!("\n{}", flow("app"))),
        "collector.d/10-web.toml:3: flow[0].name: `app` is already a flow (collector.toml:6)"
    );
    assert_eq!(
        err(format!("{}[collector]\nhost = \"h\"\n", flow("web"))),
        "collector.d/10-web.toml:6: collector: already set in collector.toml: set it in one file"
    );
    // A fragment may hold only flows, or none at all in one file of several.
    assert!(Config::merge(&texts("[metrics]\n".into())).unwrap_err().to_string().contains("metrics: already set"));
    let only_collector = vec![("a.toml".to_owned(), "[collector]\nhost = \"h\"\n".to_owned())];
    assert_eq!(
        Config::merge(&only_collector).unwrap_err().to_string(),
        "a.toml:1: flow: no [[flow]] defined: nothing to ship"
    );
}

#[test]
fn a_config_file_takes_its_d_directory_and_a_directory_its_toml_files() {
    let dir = std::env::temp_dir().join(format!("collector-config-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("collector.d")).unwrap();
    let flow = |name: &str| {
        format!("[[flow]]\nname = \"{name}\"\npaths = [\"/var/log/{name}.log\"]\n[flow.sink]\nkind = \"null\"\n")
    };
    std::fs::write(dir.join("collector.toml"), flow("base")).unwrap();
    std::fs::write(dir.join("collector.d/20-b.toml"), flow("b")).unwrap();
    std::fs::write(dir.join("collector.d/10-a.toml"), flow("a")).unwrap();
    std::fs::write(dir.join("collector.d/README"), "not a config").unwrap();
    let names = |c: Config| c.flows.into_iter().map(|f| f.name).collect::<Vec<_>>();
    assert_eq!(names(Config::load(&dir.join("collector.toml")).unwrap()), ["base", "a", "b"]);
    assert_eq!(names(Config::load(&dir.join("collector.d")).unwrap()), ["a", "b"]);
    std::fs::write(dir.join("collector.d/30-bad.toml"), "[[flow]]\nname = 3\n").unwrap();
    let e = Config::load(&dir.join("collector.toml")).unwrap_err().to_string();
    assert!(e.starts_with(&format!("{}:2: name:", dir.join("collector.d/30-bad.toml").display())), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}
