//! moto's server (PyPI moto[server], put in a virtualenv by `cargo xtask setup`) on
//! 127.0.0.1: Firehose with an S3 destination, S3 to read the delivered objects back. The
//! tests drive it with boto3, which moto installs beside itself.

use std::{
    net::TcpStream,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::kinesis_server::free_port;

pub struct MotoServer {
    child: Child,
    pub port: u16,
}

/// The virtualenv's bin directory.
fn bin_dir() -> PathBuf {
    std::env::var_os("MOTO_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/xtask/moto"))
        .join("bin")
}

impl MotoServer {
    pub fn start() -> MotoServer {
        let server = bin_dir().join("moto_server");
        assert!(server.exists(), "{} is missing: run `cargo xtask setup`", server.display());
        let port = free_port();
        let child = Command::new(&server)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting moto_server");
        let moto = MotoServer { child, port };
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "moto_server did not listen on {port}");
            std::thread::sleep(Duration::from_millis(100));
        }
        moto
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Runs a Python script with boto3 clients `firehose` and `s3` bound to this server;
    /// returns its standard output.
    pub fn python(&self, script: &str) -> String {
        let prelude = format!(
            "import boto3, json, sys\n\
             kw = dict(endpoint_url={:?}, region_name='us-east-1', aws_access_key_id='test', aws_secret_access_key='test')\n\
             firehose = boto3.client('firehose', **kw)\n\
             s3 = boto3.client('s3', **kw)\n",
            self.endpoint()
        );
        let out = Command::new(bin_dir().join("python"))
            .arg("-c")
            .arg(format!("{prelude}{script}"))
            .output()
            .expect("running the virtualenv's python");
        assert!(out.status.success(), "boto3 script failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).expect("utf-8 output")
    }

    /// A bucket and a DirectPut delivery stream into it.
    pub fn create_delivery_stream(&self, name: &str, bucket: &str) {
        self.python(&format!(
            "s3.create_bucket(Bucket={bucket:?})\n\
             firehose.create_delivery_stream(DeliveryStreamName={name:?}, DeliveryStreamType='DirectPut',\n\
               ExtendedS3DestinationConfiguration={{'RoleARN': 'arn:aws:iam::123456789012:role/firehose',\n\
                 'BucketARN': 'arn:aws:s3:::{bucket}', 'CompressionFormat': 'UNCOMPRESSED', 'BufferingHints': {{'SizeInMBs': 1, 'IntervalInSeconds': 60}}}})\n"
        ));
    }

    /// The bytes of every object in `bucket`, object by object (in key order).
    pub fn objects(&self, bucket: &str) -> Vec<Vec<u8>> {
        let out = self.python(&format!(
            "pages = s3.get_paginator('list_objects_v2').paginate(Bucket={bucket:?})\n\
             keys = sorted(o['Key'] for p in pages for o in p.get('Contents', []))\n\
             print(json.dumps([s3.get_object(Bucket={bucket:?}, Key=k)['Body'].read().hex() for k in keys]))\n"
        ));
        let hex: Vec<String> = serde_json::from_str(&out).expect("object list");
        hex.iter()
            .map(|h| (0..h.len()).step_by(2).map(|i| u8::from_str_radix(&h[i..i + 2], 16).expect("hex")).collect())
            .collect()
    }
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
