//! `cdrs-plugin-tools`: the two build steps of a C plugin, for build scripts
//! (`sdk/c/build.sh`).
//!
//! ```text
//! cdrs-plugin-tools c-bindings --wit sdk/wit --world router --out build/gen
//! cdrs-plugin-tools componentize core.wasm -o plugin.wasm
//! cdrs-plugin-tools inspect plugin.wasm
//! ```

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cdrs-plugin-tools", version, about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Write wit-bindgen's C bindings (`W.h`, `W.c`, `W_component_type.o`).
    CBindings {
        /// Directory with the WIT package (e.g. `sdk/wit`).
        #[arg(long)]
        wit: PathBuf,
        /// World to generate (`router` or `filter`).
        #[arg(long)]
        world: String,
        /// Output directory (created if missing).
        #[arg(long)]
        out: PathBuf,
    },
    /// Turn a core module with a component-type section into a component.
    Componentize {
        /// The core Wasm module.
        core: PathBuf,
        /// Where to write the component.
        #[arg(short, long)]
        output: PathBuf,
        /// A WASI preview-1 adapter to link (only for modules importing
        /// `wasi_snapshot_preview1`).
        #[arg(long)]
        adapter: Option<PathBuf>,
    },
    /// Print the imports and exports of a component (one per line).
    Inspect {
        /// The component.
        component: PathBuf,
    },
}

fn main() -> std::process::ExitCode {
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cdrs-plugin-tools: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::CBindings { wit, world, out } => {
            let files = cdrs_plugin_tools::c_bindings(&wit, &world)?;
            std::fs::create_dir_all(&out)
                .with_context(|| format!("cannot create directory `{}`", out.display()))?;
            for (name, bytes) in files {
                let path = out.join(&name);
                std::fs::write(&path, bytes)
                    .with_context(|| format!("cannot write `{}`", path.display()))?;
            }
        }
        Cmd::Componentize {
            core,
            output,
            adapter,
        } => {
            let module = std::fs::read(&core)
                .with_context(|| format!("cannot read `{}`", core.display()))?;
            let adapter = adapter
                .map(|p| {
                    std::fs::read(&p).with_context(|| format!("cannot read `{}`", p.display()))
                })
                .transpose()?;
            let component = cdrs_plugin_tools::componentize(&module, adapter.as_deref())
                .with_context(|| format!("cannot componentize `{}`", core.display()))?;
            std::fs::write(&output, component)
                .with_context(|| format!("cannot write `{}`", output.display()))?;
        }
        Cmd::Inspect { component } => {
            let bytes = std::fs::read(&component)
                .with_context(|| format!("cannot read `{}`", component.display()))?;
            let i = cdrs_plugin_tools::component_interface(&bytes)
                .with_context(|| format!("cannot inspect `{}`", component.display()))?;
            for name in &i.imports {
                println!("import {name}");
            }
            for name in &i.exports {
                println!("export {name}");
            }
        }
    }
    Ok(())
}
