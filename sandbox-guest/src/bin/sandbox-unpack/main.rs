//! `sandbox-unpack`: applies an image's layers onto a directory, inside the
//! helper VM of `images::import`. Layer tars are untrusted: every path is
//! resolved inside the target (`openat2(RESOLVE_IN_ROOT)`, as if the target
//! were the root), so `..`, absolute paths and symlinks planted by an
//! earlier layer all stay in it, and a bad layer can at worst fill the
//! target disk. Each layer's uncompressed digest is checked against the
//! image config's `diff_ids`.
//!
//! `sandbox-unpack --source DEV --target DIR [--max-bytes N] [--agent FILE]
//!  [--mkdir DIR]...
//!  OFFSET:SIZE:DIFF_ID_HEX...`

mod apply;
mod layer;
mod root;

use std::path::PathBuf;
use std::process::ExitCode;

struct Args {
    source: PathBuf,
    target: PathBuf,
    max_bytes: u64,
    agent: Option<PathBuf>,
    /// Directories to create after the layers (the image's WorkingDir,
    /// which Docker also creates when missing).
    dirs: Vec<String>,
    layers: Vec<layer::Spec>,
}

fn parse_args(args: &[String]) -> Result<Args, String> {
    let mut source = None;
    let mut target = None;
    let mut agent = None;
    let mut max_bytes = 64u64 << 30;
    let mut layers = Vec::new();
    let mut dirs = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || it.next().cloned().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--source" => source = Some(PathBuf::from(value()?)),
            "--target" => target = Some(PathBuf::from(value()?)),
            "--agent" => agent = Some(PathBuf::from(value()?)),
            "--mkdir" => dirs.push(value()?),
            "--max-bytes" => {
                max_bytes = value()?
                    .parse()
                    .map_err(|_| "--max-bytes needs a number".to_string())?
            }
            spec => layers.push(layer::Spec::parse(spec)?),
        }
    }
    Ok(Args {
        source: source.ok_or("--source is required")?,
        target: target.ok_or("--target is required")?,
        max_bytes,
        agent,
        dirs,
        layers,
    })
}

fn run(args: Args) -> Result<(), String> {
    let root = root::Root::open(&args.target)
        .map_err(|e| format!("target {}: {e}", args.target.display()))?;
    let mut budget = args.max_bytes;
    let n = args.layers.len();
    for (i, spec) in args.layers.iter().enumerate() {
        let stats = layer::apply(&args.source, spec, &root, &mut budget)
            .map_err(|e| format!("layer {}/{n} (diff_id sha256:{}): {e}", i + 1, spec.diff_id))?;
        println!(
            "layer {}/{n}: {} entries, {} bytes uncompressed, {:?} compression",
            i + 1,
            stats.entries,
            stats.bytes,
            stats.compression
        );
    }
    for d in &args.dirs {
        root.dir(&root::components(d.as_bytes()))
            .map_err(|e| format!("creating {d}: {e}"))?;
    }
    root.prepare_for_agent(args.agent.as_deref())
        .map_err(|e| format!("preparing the image for the agent: {e}"))?;
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match parse_args(&args).and_then(run) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sandbox-unpack: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests;
