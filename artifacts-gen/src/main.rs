//! The `artifacts-gen` command: see `artifacts-gen --help`.

use clap::Parser as _;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = artifacts_gen::cli::Cli::parse();
    clikit::init_logging(cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(artifacts_gen::cli::run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
