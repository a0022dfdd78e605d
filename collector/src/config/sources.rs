//! Where config texts come from: a file, the `<stem>.d/*.toml` directory beside it, a
//! directory, a Kinesis Agent agent.json (imported), or an SSM parameter. Each text keeps
//! the name its errors will carry.

use std::path::{Path, PathBuf};

use super::{ConfigError, kinesis_agent};

/// Texts in merge order, named.
pub fn read(source: &Path) -> Result<Vec<(String, String)>, ConfigError> {
    let shown = source.display().to_string();
    if let Some(name) = shown.strip_prefix("ssm:") {
        return ssm(name).map(|text| vec![(shown.clone(), text)]);
    }
    let error = |file: &Path, message: String| ConfigError {
        file: file.display().to_string(),
        line: 0,
        key: "-".into(),
        message,
        temporary: false,
    };
    if source.is_dir() {
        let files = toml_files(source).map_err(|e| error(source, format!("cannot list: {e}")))?;
        if files.is_empty() {
            return Err(error(source, "no *.toml files in this directory".into()));
        }
        return files.iter().map(|f| read_file(f)).collect();
    }
    let mut texts = vec![read_file(source)?];
    // collector.toml, then collector.d/*.toml (fleet-wide file first, per-host additions after).
    if let (Some(dir), Some(stem)) = (source.parent(), source.file_stem()) {
        let extra = dir.join(format!("{}.d", stem.to_string_lossy()));
        if extra.is_dir() {
            for f in toml_files(&extra).map_err(|e| error(&extra, format!("cannot list: {e}")))? {
                texts.push(read_file(&f)?);
            }
        }
    }
    Ok(texts)
}

fn toml_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "toml") && p.is_file())
        .collect();
    files.sort();
    Ok(files)
}

fn read_file(path: &Path) -> Result<(String, String), ConfigError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: file.clone(),
        line: 0,
        key: "-".into(),
        message: format!("cannot read: {e}"),
        temporary: false,
    })?;
    if path.extension().is_some_and(|e| e == "json") {
        // A Kinesis Agent agent.json, used as its import says.
        let imported = kinesis_agent::import(&[(file.clone(), text)]).map_err(|message| ConfigError {
            file: file.clone(),
            line: 0,
            key: "-".into(),
            message,
            temporary: false,
        })?;
        for d in &imported.dropped {
            tracing::warn!("{file}: not carried over from the Kinesis Agent config: {d}");
        }
        return Ok((format!("{file} (imported)"), imported.toml));
    }
    Ok((file, text))
}

#[cfg(feature = "kinesis")]
fn ssm(name: &str) -> Result<String, ConfigError> {
    ssm_parameter(name).map_err(|(message, temporary)| ConfigError {
        file: format!("ssm:{name}"),
        line: 0,
        key: "-".into(),
        message,
        temporary,
    })
}

/// The parameter's value (SecureString decrypted), through aws-config's default chain for
/// region and credentials; `AWS_ENDPOINT_URL_SSM` or `AWS_ENDPOINT_URL` point it elsewhere.
/// An error says whether a later try may work (the network, throttling, a 5xx) or not (no
/// such parameter, access denied).
#[cfg(feature = "kinesis")]
fn ssm_parameter(name: &str) -> Result<String, (String, bool)> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| (format!("starting a runtime: {e}"), true))?;
    runtime.block_on(async {
        let config = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
        let client = aws_sdk_ssm::Client::new(&config);
        let out = client
            .get_parameter()
            .name(name)
            .with_decryption(true)
            .send()
            .await
            .map_err(|e| (crate::aws::describe(&e), crate::aws::is_retryable(&e)))?;
        out.parameter.and_then(|p| p.value).ok_or_else(|| ("the parameter has no value".to_owned(), false))
    })
}

#[cfg(not(feature = "kinesis"))]
fn ssm(name: &str) -> Result<String, ConfigError> {
    Err(ConfigError {
        file: format!("ssm:{name}"),
        line: 0,
        key: "-".into(),
        message: "this collector was built without the AWS SDK".into(),
        temporary: false,
    })
}
