//! moto's server (PyPI moto[server], put in a virtualenv by `cargo xtask setup`; started
//! where `servers` says): Firehose with an S3 destination, S3 to read the delivered objects
//! back. The tests drive it with boto3, which moto installs beside itself.

use crate::servers::{self, Server};

pub struct MotoServer {
    _server: Server,
    pub port: u16,
}

impl MotoServer {
    pub fn start() -> MotoServer {
        let port = servers::free_port();
        MotoServer { _server: Server::moto(port), port }
    }

    /// Where the collector reaches it.
    pub fn endpoint(&self) -> String {
        servers::endpoint(self.port)
    }

    /// Runs a Python script with boto3 clients `firehose` and `s3` bound to this server;
    /// returns its standard output. (It runs beside the server: 127.0.0.1 is the server's.)
    pub fn python(&self, script: &str) -> String {
        let prelude = format!(
            "import boto3, json, sys\n\
             kw = dict(endpoint_url='http://127.0.0.1:{}', region_name='us-east-1', aws_access_key_id='test', aws_secret_access_key='test')\n\
             firehose = boto3.client('firehose', **kw)\n\
             s3 = boto3.client('s3', **kw)\n",
            self.port
        );
        let out = servers::python(&format!("{prelude}{script}"));
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
