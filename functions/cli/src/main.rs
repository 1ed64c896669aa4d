//! `taskq`: see `taskq --help`.

use std::process::ExitCode;

use clap::Parser;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = taskq_cli::Cli::parse();
    match taskq_cli::run(cli, &mut std::io::stdout().lock()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("taskq: {e}");
            e.exit_code()
        }
    }
}
