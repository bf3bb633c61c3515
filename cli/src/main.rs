//! Entry point of the `sgpu` command.

use clap::Parser;
use sgpu_cli::{Cli, EXIT_SGPU_ERROR};

fn main() {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_SGPU_ERROR } else { 0 };
            let _ = e.print();
            std::process::exit(code);
        }
    };
    match sgpu_cli::run(cli) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("sgpu: {e:#}");
            std::process::exit(EXIT_SGPU_ERROR);
        }
    }
}
