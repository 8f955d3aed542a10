//! Print or write the gearfleet CRD manifests.
//!
//! ```text
//! crdgen               # print all CRDs to stdout (multi-document YAML)
//! crdgen --out DIR     # write DIR/workerpools.gearfleet.dev.yaml and DIR/jobs.gearfleet.dev.yaml
//! ```

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

const USAGE: &str = "usage: crdgen [--out DIR]\n\n\
Without arguments, print every gearfleet CRD to stdout as multi-document YAML.\n\
With --out DIR, write one file per CRD into DIR (created if missing).";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let out = match args.as_slice() {
        [] => None,
        [flag, dir] if flag == "--out" || flag == "-o" => Some(PathBuf::from(dir)),
        [flag] if flag.starts_with("--out=") => Some(PathBuf::from(&flag["--out=".len()..])),
        [flag] if flag == "-h" || flag == "--help" => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(out) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("crdgen: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(out: Option<PathBuf>) -> Result<(), Box<dyn std::error::Error>> {
    let files = gearfleet_crd::crd_files()?;
    match out {
        None => {
            let mut stdout = std::io::stdout().lock();
            for (i, (_, yaml)) in files.iter().enumerate() {
                if i > 0 {
                    writeln!(stdout, "---")?;
                }
                stdout.write_all(yaml.as_bytes())?;
            }
            stdout.flush()?;
        }
        Some(dir) => {
            std::fs::create_dir_all(&dir)?;
            for (name, yaml) in files {
                let path = dir.join(name);
                std::fs::write(&path, yaml).map_err(|e| format!("writing {}: {e}", path.display()))?;
                eprintln!("wrote {}", path.display());
            }
        }
    }
    Ok(())
}
