//! `maxbatch models`: the built-in models, or a config's, with their parameter counts.

use std::process::ExitCode;

use anyhow::Result;
use maxbatch::format::parameters;
use maxbatch::models::{ModelOptions, ModelSpec, PRESETS};
use maxbatch::Error;

use crate::resolve::Models;

/// Lists the presets (or describes `--config`'s model).
pub fn run(job: &Models) -> Result<ExitCode> {
    let defaults = ModelOptions::default();
    if let Some(spec) = &job.config {
        let info = spec.info(&defaults)?;
        if job.json {
            println!("{}", serde_json::to_string_pretty(&info)?);
        } else {
            println!(
                "{}: {} parameters ({}), {}",
                info.name,
                parameters(info.parameters),
                info.parameters,
                info.summary
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    let infos = PRESETS
        .iter()
        .map(|(name, _)| ModelSpec::preset(name)?.info(&defaults))
        .collect::<Result<Vec<_>, Error>>()?;
    if job.json {
        println!("{}", serde_json::to_string_pretty(&infos)?);
    } else {
        println!(
            "{:<20}{:>12}  {:<16}  architecture",
            "model", "parameters", "input"
        );
        for m in &infos {
            println!(
                "{:<20}{:>12}  {:<16}  {}",
                m.name,
                parameters(m.parameters),
                m.input,
                m.summary
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
