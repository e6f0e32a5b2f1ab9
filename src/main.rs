//! The `runner` binary: parse the command line, run it, print the error chain, pick the exit
//! code (0 all good, 1 some trial failed, 2 bad input, 75 stopped by SIGTERM or SIGUSR1 (requeue),
//! 130 interrupted).

use clap::Parser;

fn main() {
    let cli = runner::cli::Cli::parse();
    let code = match runner::commands::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            match e.downcast_ref::<runner::Error>() {
                Some(err) if err.is_bad_input() => 2,
                _ => 1,
            }
        }
    };
    std::process::exit(code);
}
