//! The Firehose sink against moto's server (Firehose with an S3 destination, started here
//! on 127.0.0.1): every line lands in the bucket exactly once, under rotation.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use collector_tests::{
    Running, Scratch, assert_every_line_once_in_order, moto_server::MotoServer, numbered, rotate_repeatedly,
    writer_process,
};
use serde_json::Value;

/// Every line in the bucket's objects, as the envelopes the collector wrote, in file order
/// (objects are named to the second: their order across objects is not the files').
fn delivered(moto: &MotoServer, bucket: &str) -> Vec<Value> {
    let mut records: Vec<Value> = moto
        .objects(bucket)
        .iter()
        .flat_map(|o| {
            o.split(|b| *b == b'\n')
                .filter(|l| !l.is_empty())
                .map(|l| serde_json::from_slice(l).expect("an envelope"))
                .collect::<Vec<Value>>()
        })
        .collect();
    records.sort_by_key(|r| (r["ino"].as_u64(), r["offset"].as_u64()));
    records
}

#[test]
fn firehose_delivers_every_line_to_s3_once_under_rotation() {
    const LINES: u64 = 3_000;
    let moto = MotoServer::start();
    moto.create_delivery_stream("logs", "logs-bucket");
    let scratch = Scratch::new("firehose");
    let log = scratch.path("app.log");
    std::fs::write(&log, b"").unwrap();
    let config = format!(
        "[collector]\nstate_dir = {:?}\nhost = \"test\"\n\n[[flow]]\nname = \"app\"\npaths = [{:?}]\nrotated_idle = \"2s\"\n\n\
         [flow.sink]\nkind = \"firehose\"\ndelivery_stream = \"logs\"\nregion = \"us-east-1\"\nendpoint_url = {:?}\n\
         envelope = \"json\"\naggregate = true\n",
        scratch.path("state"),
        scratch.pattern("app.log*"),
        moto.endpoint()
    );
    let config_path = scratch.path("collector.toml");
    std::fs::write(&config_path, config).unwrap();
    let collector = Running::start_with_env(
        &config_path,
        &[("AWS_ACCESS_KEY_ID", "test"), ("AWS_SECRET_ACCESS_KEY", "test"), ("AWS_EC2_METADATA_DISABLED", "true")],
    );
    let stop = Arc::new(AtomicBool::new(false));
    let rotator = rotate_repeatedly(log.clone(), "create\nrotate 100".into(), Duration::from_millis(300), stop.clone());
    let mut writer = writer_process(env!("CARGO_BIN_EXE_log_writer"), &log, "w", LINES, 1_000, true);
    assert!(writer.wait().unwrap().success());
    stop.store(true, Ordering::Relaxed);
    let rotations = rotator.join().unwrap();
    assert!(rotations >= collector_tests::min_rotations(), "{rotations} rotations");
    let deadline = Instant::now() + Duration::from_secs(60);
    let records = loop {
        let records = delivered(&moto, "logs-bucket");
        if numbered(&records, "w").len() as u64 >= LINES || Instant::now() > deadline {
            std::thread::sleep(Duration::from_secs(1));
            break delivered(&moto, "logs-bucket");
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_every_line_once_in_order(&records, "w", LINES);
    assert!(collector.log_lines(Duration::ZERO).iter().any(|l| l.contains("firehose delivery stream reachable")));
}
