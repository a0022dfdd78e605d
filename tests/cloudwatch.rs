//! `[metrics.cloudwatch]` against moto's CloudWatch: the Kinesis Agent's metric names per
//! flow, counts that add up to what was shipped, and the last interval sent on SIGTERM.

use std::io::Write as _;

use collector_tests::{Running, Scratch, config, moto_server::MotoServer, wait_for_records};

#[test]
fn flow_counters_reach_cloudwatch_under_the_kinesis_agents_names() {
    let moto = MotoServer::start();
    let scratch = Scratch::new("cloudwatch");
    let log = scratch.path("app.log");
    std::fs::write(&log, b"").unwrap();
    let out = scratch.path("out.jsonl");
    let text = format!(
        "[metrics.cloudwatch]\nnamespace = \"CollectorTest\"\ninterval = \"1s\"\nregion = \"us-east-1\"\nendpoint_url = \"{}\"\n\n{}",
        moto.endpoint(),
        config(&scratch.path("state"), &[log.display().to_string()], &out, "")
    );
    let path = scratch.path("collector.toml");
    std::fs::write(&path, text).unwrap();
    let collector = Running::start_with_env(&path, &[("AWS_ACCESS_KEY_ID", "test"), ("AWS_SECRET_ACCESS_KEY", "test")]);
    let lines: Vec<String> = (0..25).map(|i| format!("request {i} served in {}ms", i * 7)).collect();
    let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
    for l in &lines {
        writeln!(f, "{l}").unwrap();
    }
    assert_eq!(wait_for_records(&out, lines.len()).len(), lines.len());
    // SIGTERM right away: what was not sent yet goes in the last call.
    assert!(collector.kill(libc::SIGTERM).success());

    let out = moto.python(
        "cw = boto3.client('cloudwatch', **kw)\n\
         import datetime\n\
         now = datetime.datetime.now(datetime.timezone.utc)\n\
         names = sorted({m['MetricName'] for m in cw.list_metrics(Namespace='CollectorTest')['Metrics']})\n\
         sums = {}\n\
         for name in names:\n\
         \x20   s = cw.get_metric_statistics(Namespace='CollectorTest', MetricName=name, Dimensions=[{'Name': 'Flow', 'Value': 'app'}],\n\
         \x20       StartTime=now - datetime.timedelta(minutes=10), EndTime=now + datetime.timedelta(minutes=1), Period=60, Statistics=['Sum'])\n\
         \x20   sums[name] = sum(p['Sum'] for p in s['Datapoints'])\n\
         print(json.dumps({'names': names, 'sums': sums}))\n",
    );
    let got: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(
        got["names"],
        serde_json::json!([
            "BytesSent",
            "LagBytes",
            "RecordSendAttempts",
            "RecordSendErrors",
            "RecordsSent",
            "ServiceErrors"
        ])
    );
    let sums = &got["sums"];
    assert_eq!(sums["RecordsSent"].as_f64(), Some(lines.len() as f64), "{got}");
    assert_eq!(sums["RecordSendAttempts"].as_f64(), Some(lines.len() as f64), "{got}");
    let bytes: usize = lines.iter().map(String::len).sum();
    assert_eq!(sums["BytesSent"].as_f64(), Some(bytes as f64), "{got}");
    assert_eq!((sums["RecordSendErrors"].as_f64(), sums["ServiceErrors"].as_f64()), (Some(0.0), Some(0.0)), "{got}");
}
