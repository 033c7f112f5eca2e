//! `plexus completion SHELL` and `plexus man`: generated from the same definitions as
//! the parser (`cli.rs`), so they can never disagree with it.

use crate::cli::Cli;
use anyhow::{Context, Result};
use clap::CommandFactory;
use std::path::Path;

pub fn completion(shell: clap_complete::Shell) -> Result<i32> {
    let mut cmd = crate::help::with_examples(Cli::command());
    // Into memory first: the generator panics on a write error (`| head`).
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut cmd, "plexus", &mut script);
    crate::output::out(String::from_utf8_lossy(&script).trim_end());
    Ok(0)
}

/// The main page on stdout, or every command's page written into `dir`.
pub fn man(dir: Option<&Path>) -> Result<i32> {
    let cmd = crate::help::with_examples(Cli::command());
    match dir {
        None => {
            let mut page = Vec::new();
            clap_mangen::Man::new(cmd).render(&mut page)?;
            crate::output::out(String::from_utf8_lossy(&page).trim_end());
        }
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            clap_mangen::generate_to(cmd, dir)
                .with_context(|| format!("cannot write the pages into {}", dir.display()))?;
            eprintln!("manual pages written to {}", dir.display());
        }
    }
    Ok(0)
}
